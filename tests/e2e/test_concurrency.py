"""Many streaming clients at once, and a client that hangs up mid-stream."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.e2e.conftest import metric

NUM_CLIENTS = 100
NUM_PROMPTS = 10


def _request(i: int) -> dict:
    # greedy: the answer depends only on the prompt, whatever else shares the batch
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Count to {i % NUM_PROMPTS}, please."}],
        "max_tokens": 16,
        "temperature": 0,
    }


async def test_100_concurrent_streams_get_their_own_correct_text(aclient):
    expected = {}
    for i in range(NUM_PROMPTS):
        whole = await aclient.chat.completions.create(**_request(i))
        expected[i] = whole.choices[0].message.content

    async def one(i: int) -> str:
        stream = await aclient.chat.completions.create(
            **_request(i), stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
        assert usage is not None and usage.completion_tokens > 0
        return text

    texts = await asyncio.gather(*(one(i) for i in range(NUM_CLIENTS)))
    wrong = [i for i, text in enumerate(texts) if text != expected[i % NUM_PROMPTS]]
    assert wrong == []


def test_a_client_that_disconnects_mid_stream_frees_its_engine_slot(server):
    base = server.base_url
    gone = 'endpoint="chat.completions",finish_reason="client_gone"'
    generated_before = metric(base, "ownllm_engine_tokens_generated")
    gone_before = metric(base, "ownllm_choices_finished_total", gone)
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Go on forever."}],
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{base}/v1/chat/completions", json=body) as response,
    ):
        num_chunks = 0
        lines = response.iter_lines()  # kept: closing this iterator closes the connection
        for line in lines:
            num_chunks += line.startswith("data: ")
            if num_chunks == 4:
                break
        assert metric(base, "ownllm_running_requests") == 1  # the slot is held while streaming
    # the connection is closed here, long before 4000 tokens
    deadline = time.monotonic() + 120  # only bounds a hang
    while metric(base, "ownllm_running_requests") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(base, "ownllm_running_requests") == 0
    assert metric(base, "ownllm_queue_depth") == 0
    assert metric(base, "ownllm_choices_finished_total", gone) == gone_before + 1
    assert metric(base, "ownllm_engine_tokens_generated") - generated_before < 4000
