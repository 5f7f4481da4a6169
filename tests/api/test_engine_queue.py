"""Over HTTP with the embedded engine: a request that could never fit the engine's queue is a
400 saying what to lower (not a 503 to retry forever); ordinary requests still get in."""

from __future__ import annotations

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.backends.embedded import EmbeddedBackend
from ownllm.config import EngineConfig


@pytest.fixture
async def engine_client(fake_state, tiny_model_dir):
    # KV cache 256 tokens: the queue holds max(4 x 256, the 512-token context) = 1024 tokens
    backend = EmbeddedBackend(
        tiny_model_dir, "tiny", EngineConfig(kv_cache_tokens=256), dtype="float32"
    )
    fake_state.backend = backend
    app = create_app(fake_state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
    await backend.shutdown()


async def test_n_128_without_max_tokens_is_refused_and_small_requests_are_served(engine_client):
    messages = [{"role": "user", "content": "Hello world!"}]
    huge = await engine_client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": messages, "n": 128}
    )
    assert huge.status_code == 400, huge.text
    error = huge.json()["error"]
    assert (
        error["param"] == "max_tokens" and "lower n or set a smaller max_tokens" in error["message"]
    )
    small = await engine_client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": messages, "n": 2, "max_tokens": 4},
    )
    assert small.status_code == 200, small.text
    assert len(small.json()["choices"]) == 2
