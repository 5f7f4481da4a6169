"""A full engine queue is a 503 with Retry-After that the openai client understands."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import metric, start_server

LONG = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "Go on."}],
    "max_tokens": 4000,
    "ignore_eos": True,
    "stream": True,
}
SHORT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, e2e_model_dir):
    env = {"OWNLLM_ENGINE_MAX_NUM_SEQS": "1", "OWNLLM_ENGINE_MAX_QUEUE": "1"}
    server = start_server(tmp_path_factory, e2e_model_dir, env=env)
    yield server
    server.stop()


async def test_full_queue_is_503_with_retry_after(small_server):
    base = small_server.base_url
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        async with http.stream("POST", "/v1/chat/completions", json=LONG) as running:
            lines = running.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # holds the only slot
            queued = asyncio.create_task(http.post("/v1/chat/completions", json=SHORT))
            deadline = time.monotonic() + 120  # only bounds a hang
            while metric(base, "ownllm_queue_depth") < 1:  # waits for the slot
                assert time.monotonic() < deadline and not queued.done(), "never queued"
                await asyncio.sleep(0.05)
            refused = await http.post("/v1/chat/completions", json=SHORT)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "server_overloaded"
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(**SHORT)
            assert info.value.status_code == 503
        # the long stream is closed: the queued request gets the slot and completes
        done = await queued
        # (a random tiny model may end at once: the answer may be empty, but it is finished)
        assert done.status_code == 200
        assert done.json()["choices"][0]["finish_reason"] in ("stop", "length")
