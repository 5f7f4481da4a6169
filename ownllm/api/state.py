"""The explicit application state, built once by the app factory (no module globals).

What the api layer's routes read: the config, data dir and database, the prepared model and
its tokenizer, the backend (set when the app starts), the metrics, the embedding model and the
vector store indexes.
The gateway's parts are not here: they are the app's `Gateway` (`ownllm.gateway.gateway`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ownllm.api.metrics import Metrics
from ownllm.config import Config, GenerationDefaults
from ownllm.models.cache import PreparedModel
from ownllm.models.embedding import LazyEmbeddingModel
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.vectors.index import IndexCache


@dataclass
class AppState:
    config: Config
    data_dir: DataDir
    db: Database | None = None
    model: PreparedModel | None = None
    tokenizer: Any = None
    backend: Any = None  # ownllm.backends.base.Backend once started
    # sampling values for fields a request leaves out (ownllm.models.generation)
    generation_defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    # the shipped embedding model, loaded on the first embeddings request
    embedding_model: LazyEmbeddingModel = field(default_factory=LazyEmbeddingModel)
    # this replica's vector store indexes, loaded from the database on first search
    vector_index: IndexCache = field(default_factory=IndexCache)
    started_at: float = field(default_factory=time.time)
    batch_worker: Any = None  # ownllm.api.batch_worker.BatchWorker once the app started
    eval_worker: Any = None  # ownllm.api.eval_runner.EvalWorker once the app started
    metrics: Metrics = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self)  # its engine gauges read `self.backend` at each scrape

    @property
    def model_id(self) -> str:
        return self.model.id if self.model else self.config.model.name or self.config.model.model


async def get_state(request: Request) -> AppState:
    return request.app.state.ownllm
