"""The explicit application state, built once by the app factory (no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ownllm.config import Config, GenerationDefaults
from ownllm.models.cache import PreparedModel
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database


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
    # gateway plug points of the inference pipeline, in order (see ownllm.gateway.hooks)
    inference_hooks: list[Any] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.model.id if self.model else self.config.model.name or self.config.model.model


async def get_state(request: Request) -> AppState:
    return request.app.state.ownllm
