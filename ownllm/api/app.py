"""The app factory: `build_state(config)` prepares what the server needs (model
cache, database) and fails fast with one-line errors; `create_app(state)`
builds the FastAPI app whose lifespan starts and stops the backend.
No module-level state: two apps in one process do not share anything.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ownllm import __version__
from ownllm.api.errors import install_error_handlers
from ownllm.api.state import AppState
from ownllm.config import Config
from ownllm.models import prepare_model, resolve_model
from ownllm.models.generation import generation_defaults
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
    generation = generation_defaults(source, config.model.generation)
    model = prepare_model(source, data_dir.root)
    if source.kind == "hf_dir":
        log.info("model %s: read from %s", model.id, model.path)
    elif model.from_cache:
        log.info("model %s: loaded from cache in %.1fs", model.id, model.seconds)
    else:
        log.info(
            "model %s: dequantised from %s in %.1fs, cached in %s",
            model.id,
            source.path.name,
            model.seconds,
            model.path,
        )
    tokenizer = Tokenizer.from_dir(model.path)
    db = Database.open(config.store.url)
    from ownllm.adapters.registry import sweep_orphans

    sweep_orphans(db, data_dir)  # adapter copies a crashed process left without a row
    return AppState(
        config=config,
        data_dir=data_dir,
        db=db,
        model=model,
        tokenizer=tokenizer,
        generation_defaults=generation,
    )


def start_backend(state: AppState):
    """Create the embedded engine for the prepared model (imported lazily: torch is heavy)."""
    import torch

    from ownllm.backends.embedded import EmbeddedBackend

    cfg = state.config
    device = cfg.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EmbeddedBackend(
        model_dir=state.model.path,
        model_id=state.model.id,
        engine_config=cfg.engine,
        dtype=cfg.model.dtype,
        device=device,
        max_model_len=cfg.model.max_model_len,
        adapter_resolver=_adapter_resolver(state),
    )


def _adapter_resolver(state: AppState):
    """Registry lookup on every miss: adapters registered by any process sharing the
    database and data dir (CLI, worker, another server) load without a restart."""
    if state.db is None:
        return None
    from ownllm.adapters.registry import make_resolver

    return make_resolver(state.db, state.data_dir)


def freeze_startup_heap() -> None:
    """Move every object alive after startup out of the garbage collector's reach.

    The server's heap after startup is ~220,000 tracked objects (torch, FastAPI, SQLAlchemy,
    the model's modules), nearly all alive until exit. Python's full (generation-2)
    collection walks all of them: ~100-150 ms with the event loop stopped, which every
    in-flight stream feels, every few thousand requests. Frozen objects are skipped, so a
    full collection walks only what requests created. Garbage is collected first, so
    nothing unreachable is kept; the lifespan unfreezes at shutdown.
    """
    gc.collect()
    gc.freeze()


def create_app(state: AppState, *, start_engine: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_engine and state.backend is None:
            state.backend = start_backend(state)
        if state.backend is not None:
            await state.backend.start()
        if start_engine and state.config.server.run_worker and state.model is not None:
            from ownllm.tuning.process import start_worker_process

            state.extras["worker"] = start_worker_process(state)
        from ownllm.gateway.purge import start_retention

        retention = start_retention(state)
        freeze_startup_heap()
        try:
            yield
        finally:
            gc.unfreeze()  # what this app built may become garbage again (tests, reloads)
            if retention is not None:
                retention.cancel()
            if "worker" in state.extras:
                from ownllm.tuning.process import stop_worker_process

                stop_worker_process(state.extras.pop("worker"))
            if state.backend is not None:
                await state.backend.shutdown()
            if "metering" in state.extras:  # the gateway's ledger: write queued rows first
                state.extras["metering"].close()
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
    from ownllm.api.routes import chat, completions, embeddings, metrics

    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(metrics.router)
    from ownllm.api.routes import admin, usage

    app.include_router(admin.router)
    app.include_router(usage.router)
    from ownllm.gateway.metering import metering_hook_for

    if metering_hook_for(state) not in state.inference_hooks:
        state.inference_hooks.insert(0, metering_hook_for(state))  # limits before guards
    from ownllm.api.routes import stored_completions
    from ownllm.gateway.capture import capture_hook_for
    from ownllm.gateway.guard.hooks import guard_hook_for

    app.include_router(stored_completions.router)
    for hook in (guard_hook_for(state), capture_hook_for(state) if state.db else None):
        if hook is not None and hook not in state.inference_hooks:
            state.inference_hooks.append(hook)  # after metering: guard, then capture
    from ownllm.api.routes import adapters

    app.include_router(adapters.router)
    from ownllm.api.routes import files, fine_tuning

    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    from ownllm.web import dashboard, routes  # the dashboard's static routes stay last

    app.include_router(dashboard.router)
    app.include_router(routes.router)
    from ownllm.api.bodies import BodyGate

    app.add_middleware(BodyGate, api=app, state=state)  # key and size checked before the body
    from ownllm.api.origin import OriginCheck

    app.add_middleware(OriginCheck, server=state.config.server)  # outermost: Host, Origin
    return app
