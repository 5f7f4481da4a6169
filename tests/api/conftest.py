"""An in-process app over a ScriptedBackend (no engine, no torch): fast API tests.

`client` is an app on `fake_state` (tests/conftest.py: no database, open development
mode); `gateway` is an app on the `two_tenants` database — keys, limits, usage ledger —
over a ScriptedBackend counting "tok0 tok1 …" and the stub embedding model."""

from __future__ import annotations

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.backends.scripted import counting_backend
from ownllm.models.embedding import LazyEmbeddingModel
from ownllm.models.tokenizer import Tokenizer
from tests.api.stub_embedding import StubEmbeddingModel
from tests.tenants import gateway_state


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
    apps = []

    def make(configure=None):
        tokenizer = Tokenizer.from_dir(tiny_model_dir)
        state = gateway_state(tmp_path, two_tenants, backend=counting_backend(tokenizer))
        state.tokenizer = tokenizer
        state.embedding_model = LazyEmbeddingModel(StubEmbeddingModel())
        if configure is not None:
            configure(state)
        apps.append(create_app(state, start_engine=False))
        return apps[-1], state

    yield make
    for app in apps:
        app.state.gateway.ledger.close()


@pytest.fixture
def gateway(make_gateway):
    """(app, state): the gateway on the tenants' database with the stub embedding model."""
    return make_gateway()
