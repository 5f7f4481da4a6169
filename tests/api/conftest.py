"""An in-process app over a scripted FakeBackend (no engine, no torch): fast API tests.

`client` has no database (open development mode); `gateway` is an app on the
`two_tenants` database — keys, limits, usage ledger — over tests/fake_backend.py's
FakeBackend and the stub embedding model."""

from __future__ import annotations

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.api.state import AppState
from ownllm.config import load_config
from ownllm.gateway.usage import ledger_for
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from tests.api.fake_backend import FakeBackend, StubEmbeddingModel
from tests.fake_backend import FakeBackend as TokenBackend
from tests.tenants import gateway_state


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


@pytest.fixture
def make_gateway(tmp_path, tiny_model_dir, two_tenants):
    """Build (app, state) on the tenants' database; `configure(state)`, if given, runs
    before the app is made (a guard policy, capture defaults). Ledgers are closed after."""
    states = []

    def make(configure=None):
        tokenizer = Tokenizer.from_dir(tiny_model_dir)
        state = gateway_state(tmp_path, two_tenants, backend=TokenBackend(tokenizer))
        state.tokenizer = tokenizer
        state.extras["embedding_model"] = StubEmbeddingModel()
        if configure is not None:
            configure(state)
        states.append(state)
        return create_app(state, start_engine=False), state

    yield make
    for state in states:
        ledger_for(state).close()


@pytest.fixture
def gateway(make_gateway):
    """(app, state): the gateway on the tenants' database with the stub embedding model."""
    return make_gateway()
