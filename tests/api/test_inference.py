"""The shared pipeline: gateway hook points, disconnects, metrics."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import replace

import httpx

from ownllm.api.app import create_app
from ownllm.backends.base import EngineStats
from ownllm.errors import ContentPolicyError, RateLimitError
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.hooks import InferenceHook
from tests.api.test_chat import CHAT, sse_events


def client_with(state, hook: InferenceHook) -> httpx.AsyncClient:
    """A client of an app whose gateway runs `hook` after its own hooks."""
    gateway = Gateway.build(state.config, state.db, backend=lambda: state.backend)
    gateway = replace(gateway, hooks=(*gateway.hooks, hook))
    app = create_app(state, gateway=gateway, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


class RecordingHook(InferenceHook):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def admit_request(self, call) -> None:
        self.calls.append(("admit_request", len(call.prompt_token_ids)))

    async def admit_tokens(self, call) -> None:
        self.calls.append(("admit_tokens", call.max_total_tokens))

    async def finish(self, call, outcome) -> None:
        self.calls.append(("finish", outcome))


async def test_hooks_run_in_order_and_finish_sees_the_outcome(fake_state):
    hook = RecordingHook()
    async with client_with(fake_state, hook) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
    usage = r.json()["usage"]
    (request, num_prompts), (tokens, max_total), (finish, outcome) = hook.calls
    assert request == "admit_request" and num_prompts == 0  # before the prompt is read
    assert tokens == "admit_tokens" and max_total == usage["prompt_tokens"] + 5
    assert finish == "finish" and outcome.status_code == 200
    assert outcome.num_prompt_tokens == usage["prompt_tokens"]
    assert outcome.num_output_tokens == 5
    assert [c.text for c in outcome.choices] == ["Hello there, friend!"]
    assert outcome.ttft_s is not None and outcome.latency_s >= outcome.ttft_s


async def test_a_refused_admission_is_429_and_still_finishes(fake_state):
    class Limit(RecordingHook):
        async def admit_request(self, call) -> None:
            raise RateLimitError("Rate limit reached: 1 request per minute.", retry_after=30)

    hook = Limit()
    async with client_with(fake_state, hook) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    ((name, outcome),) = hook.calls
    assert name == "finish" and outcome.status_code == 429
    assert outcome.num_prompt_tokens == outcome.num_output_tokens == 0  # nothing was served
    assert fake_state.backend.requests == []


class BombAndCardGuard(InferenceHook):
    """Blocks a prompt with "bomb" in it; redacts card number 4111."""

    async def check_input(self, call) -> None:
        if "bomb" in call.messages[-1]["content"]:
            raise ContentPolicyError("blocked by policy", param="messages")
        call.messages = [
            {**m, "content": m["content"].replace("4111", "[CARD]")} for m in call.messages
        ]


async def test_input_guard_can_block_or_redact(fake_state):
    """A local backend (not `remote`): the guard runs while the request starts there, so a
    blocked or redacted prompt's request is aborted and nothing of it reaches the client."""
    backend = fake_state.backend
    async with client_with(fake_state, BombAndCardGuard()) as client:
        bomb = [{"role": "user", "content": "bomb"}]
        r = await client.post("/v1/chat/completions", json={**CHAT, "messages": bomb})
        assert r.status_code == 400 and r.json()["error"]["code"] == "content_policy_violation"
        assert [q.request_id for q in backend.requests] == backend.aborted  # it ran no further
        messages = [{"role": "user", "content": "card 4111"}]
        r = await client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello there, friend!"
    redacted = fake_state.tokenizer.encode_chat([{"role": "user", "content": "card [CARD]"}])
    plain = fake_state.tokenizer.encode_chat(messages)
    before, after = backend.requests[-2:]  # the text as sent, then as the guard left it
    assert (before.prompt_token_ids, after.prompt_token_ids) == (plain, redacted)
    assert before.request_id in backend.aborted and not backend.running


async def test_guard_during_call_off_guards_a_local_call_before_it_is_sent(fake_state):
    """`guard.during_call = false`: even a local backend sees only what the guard let pass."""
    config = fake_state.config
    fake_state.config = replace(config, guard=replace(config.guard, during_call=False))
    backend = fake_state.backend
    async with client_with(fake_state, BombAndCardGuard()) as client:
        bomb = [{"role": "user", "content": "bomb"}]
        r = await client.post("/v1/chat/completions", json={**CHAT, "messages": bomb})
        assert r.status_code == 400 and r.json()["error"]["code"] == "content_policy_violation"
        assert backend.requests == []  # the backend never saw it
        messages = [{"role": "user", "content": "card 4111"}]
        r = await client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert r.status_code == 200
    (sent,) = backend.requests
    redacted = fake_state.tokenizer.encode_chat([{"role": "user", "content": "card [CARD]"}])
    assert sent.prompt_token_ids == redacted


async def test_a_prompt_for_a_remote_backend_is_guarded_before_it_is_sent(fake_state):
    backend = fake_state.backend
    backend.is_remote = True  # the requests leave the premises
    async with client_with(fake_state, BombAndCardGuard()) as client:
        bomb = [{"role": "user", "content": "bomb"}]
        r = await client.post("/v1/chat/completions", json={**CHAT, "messages": bomb})
        assert r.status_code == 400 and r.json()["error"]["code"] == "content_policy_violation"
        assert backend.requests == []  # it never left
        messages = [{"role": "user", "content": "card 4111"}]
        r = await client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert r.status_code == 200
    (sent,) = backend.requests  # only the redacted text
    redacted = fake_state.tokenizer.encode_chat([{"role": "user", "content": "card [CARD]"}])
    assert sent.prompt_token_ids == redacted


async def test_output_guard_cuts_a_choice_with_content_filter(fake_state):
    class Guard(InferenceHook):
        async def check_output(self, call, index, text):
            return None if "friend" in text else text.upper()

    async with client_with(fake_state, Guard()) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == "HELLO THERE,"
        assert choice["finish_reason"] == "content_filter"
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    chunks = sse_events(r.text)[1:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


async def test_client_disconnect_mid_stream_aborts_the_backend_request(fake_state):
    """Drive the ASGI app by hand: the client hangs up after the first content chunk."""
    fake_state.backend.gate = threading.Semaphore(0)  # one token, then only the hang-up ends it
    app = create_app(fake_state, start_engine=False)
    body = json.dumps({**CHAT, "max_tokens": 100, "stream": True}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "server": ("test", 80),
        "client": ("t", 1),
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
    }
    gone = asyncio.Event()
    sent: list[dict] = []
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if re.search(rb'"content":"[^"]', message.get("body", b"")):  # a token's text
            gone.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=120)
    backend = fake_state.backend
    assert sent[0]["status"] == 200
    assert not any(b"[DONE]" in m.get("body", b"") for m in sent)
    assert backend.running == set()
    r_id = backend.requests[0].request_id
    assert r_id in backend.aborted
    hook_outcomes = fake_state.metrics.finished.labels("chat.completions", "client_gone")
    assert hook_outcomes._value.get() == 1


async def test_client_disconnect_during_a_whole_response_aborts_it_too(fake_state):
    backend = fake_state.backend
    backend.gate = threading.Semaphore(0)  # one token, then only the hang-up ends it
    app = create_app(fake_state, start_engine=False)
    body = json.dumps({**CHAT, "max_tokens": 200}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "server": ("test", 80), "client": ("t", 1),
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():  # like uvicorn: a disconnect is returned without waiting
        if messages:
            return messages.pop()
        while not backend.running:  # hangs up once the answer is under way
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    await asyncio.wait_for(app(scope, receive, send), timeout=120)
    assert backend.requests[0].request_id in backend.aborted and not backend.running
    assert fake_state.metrics.requests.labels("chat.completions", "499")._value.get() == 1


async def test_metrics_count_requests_tokens_and_engine_gauges(client):
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'ownllm_requests_total{endpoint="chat.completions",status="200"} 1.0' in text
    assert 'ownllm_requests_total{endpoint="completions",status="200"} 1.0' in text
    assert 'ownllm_generation_tokens_total{endpoint="chat.completions"} 5.0' in text
    assert (
        'ownllm_choices_finished_total{endpoint="chat.completions",finish_reason="length"} 1.0'
        in text
    )
    assert 'ownllm_time_to_first_token_seconds_count{endpoint="chat.completions"} 1.0' in text
    assert 'ownllm_request_latency_seconds_count{endpoint="completions"} 1.0' in text
    for gauge in ("ownllm_queue_depth", "ownllm_running_requests", "ownllm_resident_adapters"):
        assert f"\n{gauge} 0.0" in text
    assert 'ownllm_requests_in_progress{endpoint="chat.completions"} 0.0' in text


async def test_every_engine_stat_is_a_gauge_under_its_metric_name(client, fake_state, monkeypatch):
    stats = EngineStats(
        running=3,
        waiting=4,
        waiting_seqs=5,
        waiting_tokens=60,
        kv_blocks_used=7,
        kv_blocks_total=8,
        resident_adapters=2,
        tokens_generated=99,
        busy_seconds=1.5,
    )
    monkeypatch.setattr(fake_state.backend, "stats", lambda: stats)
    text = (await client.get("/metrics")).text
    for line in (
        "ownllm_queue_depth 4.0",
        "ownllm_running_requests 3.0",
        "ownllm_resident_adapters 2.0",
        "ownllm_kv_cache_blocks_used 7.0",
        "ownllm_kv_cache_blocks_total 8.0",
        "ownllm_engine_waiting_seqs 5.0",
        "ownllm_engine_waiting_tokens 60.0",
        "ownllm_engine_tokens_generated 99.0",
        "ownllm_engine_busy_seconds 1.5",
    ):
        assert f"\n{line}\n" in text, line
