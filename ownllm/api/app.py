"""The app factory: `build_state(config)` prepares what the server needs (model
cache, database) and fails fast with one-line errors; `create_app(state)` builds
the app's `Gateway` and the FastAPI app (its routers, the body gate, the origin
check), whose lifespan starts and stops the backend and closes the gateway.
No module-level state: two apps in one process do not share anything.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ownllm import __version__
from ownllm.api.bodies import BodyGate
from ownllm.api.errors import install_error_handlers
from ownllm.api.origin import OriginCheck
from ownllm.api.routes import (
    adapters,
    admin,
    aliases,
    batches,
    chat,
    completions,
    embeddings,
    evals,
    files,
    fine_tuning,
    health,
    metrics,
    models,
    redteam,
    responses,
    stored_completions,
    usage,
    vector_search,
    vector_stores,
)
from ownllm.api.state import AppState
from ownllm.config import Config
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.purge import start_retention
from ownllm.gateway.routing import Replica, Router
from ownllm.models import prepare_model, resolve_model
from ownllm.models.embedding import LazyEmbeddingModel
from ownllm.models.generation import generation_defaults
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.vectors.index import IndexCache
from ownllm.web import dashboard
from ownllm.web import routes as dashboard_files
from ownllm.web.dashboard import Dashboard

log = logging.getLogger("ownllm")

ROUTERS = (  # in matching order: the dashboard's static routes stay last
    health.router,
    models.router,
    chat.router,
    completions.router,
    responses.router,
    embeddings.router,
    metrics.router,
    admin.router,
    usage.router,
    stored_completions.router,
    adapters.router,
    aliases.router,
    evals.router,
    redteam.router,
    files.router,
    batches.router,
    fine_tuning.router,
    vector_stores.router,
    vector_search.router,
    dashboard.router,
    dashboard_files.router,
)


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
        embedding_model=LazyEmbeddingModel(static_dir=data_dir.models),
        vector_index=IndexCache(
            config.vector_stores.exact_max_chunks, config.vector_stores.index_cache_vectors
        ),
    )


def start_backend(state: AppState):
    """The app's backend from `[[backends]]` (none configured: the embedded engine over the
    prepared model, as one backend). Several backends, or any `remote = true` one, go
    behind a `Router` (`ownllm.gateway.routing`: scoring, health, failover and the hybrid
    policy, which alone may send a request to a remote). Raises ConfigError for what cannot
    be built."""
    from ownllm.adapters.compose import cat_into
    from ownllm.backends.factory import BackendContext, build_backend
    from ownllm.config import BackendConfig, ConfigError

    cfg = state.config
    context = BackendContext(
        model_id=state.model_id,
        model_dir=state.model.path if state.model is not None else None,
        tokenizer=state.tokenizer,
        data_dir=state.data_dir.root,
        engine=cfg.engine,
        model=cfg.model,
        adapter_resolver=_adapter_resolver(state),
        composer=cat_into,
    )
    configs = cfg.backends or (BackendConfig(name="embedded"),)
    if len(configs) == 1 and not configs[0].remote:
        return build_backend(configs[0], context)
    if sum(c.kind == "embedded" for c in configs) > 1:
        raise ConfigError("at most one backend may be kind embedded (one engine per process)")
    if all(c.remote for c in configs) and not any(p.mode == "route" for p in cfg.routing.policy):
        raise ConfigError(
            "every backend is remote = true, and no [[routing.policy]] routes a model there: "
            "no request could be served (add a local backend or a policy)"
        )
    replicas = [
        Replica(c.name, build_backend(c, context), is_remote=c.remote, priced_as=c.upstream_model)
        for c in configs
    ]
    return Router(replicas, cfg.routing, tokenizer=state.tokenizer)


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


def create_app(
    state: AppState, *, gateway: Gateway | None = None, start_engine: bool = True
) -> FastAPI:
    """The app over `state`, with `gateway` (default: the one `state.config` describes).

    Raises PolicyError when the guard's policy or classifier cannot be loaded."""
    if gateway is None:
        gateway = Gateway.build(state.config, state.db, backend=lambda: state.backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_engine and state.backend is None:
            state.backend = start_backend(state)
        if state.backend is not None:
            await state.backend.start()
        worker = None
        if start_engine and state.config.server.run_worker and state.model is not None:
            from ownllm.tuning.process import start_worker_process

            worker = start_worker_process(state)
        if state.config.batch.run_worker and state.db is not None:
            from ownllm.api.batch_worker import BatchWorker

            state.batch_worker = BatchWorker(state, gateway)
            state.batch_worker.start()
        if state.config.evals.run_worker and state.db is not None:
            from ownllm.api.eval_runner import EvalWorker

            state.eval_worker = EvalWorker(state, gateway)
            state.eval_worker.start()
        retention = start_retention(state.db, state.config.capture)
        freeze_startup_heap()
        try:
            yield
        finally:
            gc.unfreeze()  # what this app built may become garbage again (tests, reloads)
            if retention is not None:
                retention.cancel()
            if state.batch_worker is not None:
                await state.batch_worker.stop()  # running lines go back to the queue
                state.batch_worker = None
            if state.eval_worker is not None:
                await state.eval_worker.stop()  # a run in progress resumes elsewhere
                state.eval_worker = None
            if worker is not None:
                from ownllm.tuning.process import stop_worker_process

                stop_worker_process(worker)
            if state.backend is not None:
                await state.backend.shutdown()
            gateway.close()  # the ledger: write queued rows first
            if state.db is not None:
                state.db.close()

    app = FastAPI(
        title="ownllm",
        version=__version__,
        description="Own your LLM: an OpenAI-compatible API for your own models.",
        lifespan=lifespan,
    )
    app.state.ownllm = state
    app.state.gateway = gateway
    app.state.dashboard = Dashboard(state.db, state.data_dir, state.config.cost, state.model_id)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyGate, api=app, config=state.config, auth=gateway.auth)  # key, size
    app.add_middleware(OriginCheck, server=state.config.server)  # outermost: Host, Origin
    return app
