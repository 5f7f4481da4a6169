"""The app factory: `build_state(config)` prepares what the server needs (model
cache, database) and fails fast with one-line errors; `create_app(state)`
builds the FastAPI app whose lifespan starts and stops the backend.
No module-level state: two apps in one process do not share anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ownllm import __version__
from ownllm.api.errors import install_error_handlers
from ownllm.api.state import AppState
from ownllm.config import Config
from ownllm.models import prepare_model, resolve_model
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database

log = logging.getLogger("ownllm")


def build_state(config: Config) -> AppState:
    """Prepare the model cache and open (and migrate) the database.

    Raises ModelLoadError / DatabaseError / TokenizerError with a one-line message.
    """
    data_dir = DataDir(config.store.home).ensure()
    source = resolve_model(config.model.model, config.model.name)
    model = prepare_model(source, data_dir.root)
    how = (
        "loaded from cache"
        if model.from_cache or source.kind == "hf_dir"
        else "dequantised and cached"
    )
    log.info("model %s %s in %.1fs (%s)", model.id, how, model.seconds, model.path)
    tokenizer = Tokenizer.from_dir(model.path)
    db = Database.open(config.store.url)
    return AppState(config=config, data_dir=data_dir, db=db, model=model, tokenizer=tokenizer)


def start_backend(state: AppState):
    """Create the embedded engine for the prepared model (imported lazily: torch is heavy)."""
    from ownllm.backends.embedded import EmbeddedBackend

    cfg = state.config
    return EmbeddedBackend(
        model_dir=state.model.path,
        model_id=state.model.id,
        engine_config=cfg.engine,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        max_model_len=cfg.model.max_model_len,
    )


def create_app(state: AppState, *, start_engine: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_engine and state.backend is None:
            state.backend = start_backend(state)
        if state.backend is not None:
            await state.backend.start()
        try:
            yield
        finally:
            if state.backend is not None:
                await state.backend.shutdown()
            if state.db is not None:
                state.db.close()

    app = FastAPI(
        title="ownllm",
        version=__version__,
        description="Own your LLM: an OpenAI-compatible API for your own models.",
        lifespan=lifespan,
    )
    app.state.ownllm = state
    install_error_handlers(app)

    from ownllm.api.routes import health, models

    app.include_router(health.router)
    app.include_router(models.router)
    return app
