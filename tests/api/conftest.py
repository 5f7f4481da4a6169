"""An in-process app over a scripted FakeBackend (no engine, no torch): fast API tests."""

from __future__ import annotations

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.api.state import AppState
from ownllm.config import load_config
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from tests.api.fake_backend import FakeBackend


@pytest.fixture
def fake_state(tmp_path, tiny_model_dir) -> AppState:
    overrides = {"store": {"data_dir": str(tmp_path)}, "model": {"name": "tiny"}}
    config = load_config(env={}, overrides=overrides)
    state = AppState(
        config=config,
        data_dir=DataDir(tmp_path).ensure(),
        tokenizer=Tokenizer.from_dir(tiny_model_dir),
    )
    state.backend = FakeBackend()
    return state


@pytest.fixture
async def client(fake_state):
    app = create_app(fake_state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
