"""An in-process app with a real database and a tiny base model, for files / jobs tests."""

from __future__ import annotations

from pathlib import Path

import httpx

from ownllm.api.app import create_app
from ownllm.api.state import AppState
from ownllm.config import load_config
from ownllm.models.cache import PreparedModel
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.tuning.worker import BaseModel, Worker


def make_state(tmp_path: Path, model_dir: Path, db_url: str, **tuning) -> AppState:
    overrides = {"store": {"data_dir": str(tmp_path)}, "model": {"name": "tiny"}, "tuning": tuning}
    config = load_config(env={}, overrides=overrides)
    return AppState(
        config=config,
        data_dir=DataDir(tmp_path).ensure(),
        db=Database.open(db_url),
        model=PreparedModel("tiny", Path(model_dir), "sha-tiny", True, 0.0),
        tokenizer=Tokenizer.from_dir(model_dir),
    )


def client_for(state: AppState) -> httpx.AsyncClient:
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def worker_for(state: AppState) -> Worker:
    base = BaseModel(state.model.id, state.model.path, state.model.weights_sha256)
    return Worker(state.db, state.data_dir, base, state.config.tuning, worker_id="test-worker")
