"""Admission before the prompt is read: a key over its rate gets 429 whatever its prompt,
a prompt that cannot fit is refused by its characters without being tokenised, a long one
is tokenised off the event loop, and each stage's slot and counts are given back once."""

from __future__ import annotations

import asyncio
import threading

import httpx

from ownllm.api.inference import MAX_REQUEST_CHARS
from ownllm.backends.scripted import ScriptedBackend
from ownllm.gateway.principal import Limits
from tests.api.test_chat import CHAT
from tests.api.test_inference_routes import ledger

HUGE = "a" * 4_000_000  # the 4 MB prompt of the report
LONG = "the quick brown fox jumps over the lazy dog. " * 110  # ~5,000 characters, ~1,200 tokens
HANG_S = 60  # only catches a hang


class EncodeSpy:
    """Stands in for the HF tokenizer under `Tokenizer`: records each text it is asked to
    encode; with `gate` set, sets `entered` and holds the encoding until the gate opens
    (in whatever thread encodes), recording whether it opened before HANG_S."""

    def __init__(self, hf) -> None:
        self.hf = hf
        self.texts: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.is_released: bool | None = None

    def _hold(self, texts: list[str]) -> None:
        self.texts += texts
        self.entered.set()
        if self.gate is not None:
            self.is_released = self.gate.wait(HANG_S)

    def encode(self, text, *args, **kwargs):
        self._hold([text])
        return self.hf.encode(text, *args, **kwargs)

    def encode_batch(self, texts, *args, **kwargs):
        self._hold(list(texts))
        return self.hf.encode_batch(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.hf, name)


def spy_on(state) -> EncodeSpy:
    spy = state.tokenizer.hf = EncodeSpy(state.tokenizer.hf)
    return spy


def chat(content: str, **extra) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": content}], **extra}


EMBED = {"model": "all-minilm-l6-v2", "input": "hello"}


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_a_key_over_its_rpm_gets_429_for_a_huge_prompt_without_tokenising_it(
    gateway, two_tenants
):
    app, state = gateway
    key = two_tenants.add_key("acme", "one-rpm", limits=Limits(rpm=1))
    spy = spy_on(state)
    model = state.model_id
    async with client_for(app) as client:
        first = await client.post(
            "/v1/chat/completions", json=chat("hi", model=model), headers=key.headers
        )
        assert first.status_code == 200, first.text
        spy.texts.clear()
        for path, body in [
            ("/v1/chat/completions", chat(HUGE, model=model)),
            ("/v1/completions", {"model": model, "prompt": HUGE, "max_tokens": 5}),
        ]:
            r = await client.post(path, json=body, headers=key.headers)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert spy.texts == []  # the limiter refused it before the tokenizer saw it
    rows = [r for r in ledger(app) if r.key_id == key.key_id]
    assert [(r.http_status, r.prompt_tokens) for r in rows] == [(200, rows[0].prompt_tokens)] + [
        (429, 0)
    ] * 2


async def test_an_embedding_request_over_rpm_is_refused_before_its_tokens_are_counted(
    gateway, two_tenants
):
    app, state = gateway
    key = two_tenants.add_key("acme", "one-rpm", limits=Limits(rpm=1))
    model = state.embedding_model.model
    counted: list[list[str]] = []
    count = model.token_ids
    model.token_ids = lambda texts: counted.append(texts) or count(texts)
    async with client_for(app) as client:
        assert (await client.post("/v1/embeddings", json=EMBED, headers=key.headers)).is_success
        counted.clear()
        r = await client.post("/v1/embeddings", json={**EMBED, "input": HUGE}, headers=key.headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert counted == []


async def test_a_prompt_far_over_the_context_is_refused_by_its_characters(client, fake_state):
    spy = spy_on(fake_state)  # the tiny model: 256 tokens, a token covers at most 13 characters
    r = await client.post("/v1/chat/completions", json=chat("x" * 100_000))
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded", r.text
    assert error["param"] == "messages" and "maximum context length is 256" in error["message"]
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": HUGE})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded", r.text
    assert error["param"] == "prompt"
    assert spy.texts == []
    assert fake_state.backend.requests == []


async def test_a_request_over_the_character_cap_is_refused_unread(client, fake_state):
    spy = spy_on(fake_state)
    over = MAX_REQUEST_CHARS // 2 + 1
    r = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "messages": [{"role": "user", "content": "y" * over}] * 2},
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "string_above_max_length", r.text
    assert error["param"] == "messages"
    r = await client.post("/v1/embeddings", json={**EMBED, "input": "y" * (MAX_REQUEST_CHARS + 1)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert spy.texts == []


async def test_health_answers_while_a_long_prompt_is_tokenised(client, fake_state):
    """The tokenizer holds until /health has answered, which it can only do if the
    tokenisation runs off the event loop."""
    fake_state.backend = ScriptedBackend(max_model_len=4096)
    spy = spy_on(fake_state)
    spy.gate = threading.Event()
    answer = asyncio.create_task(client.post("/v1/chat/completions", json=chat(LONG)))
    assert await asyncio.to_thread(spy.entered.wait, HANG_S)
    health = await client.get("/health")
    spy.gate.set()
    assert health.status_code == 200
    r = await answer
    assert r.status_code == 200, r.text
    assert spy.is_released  # the gate opened when /health answered, not at the hang bound
    expected = fake_state.tokenizer.encode_chat(chat(LONG)["messages"])
    assert r.json()["usage"]["prompt_tokens"] == len(expected)


async def test_slots_and_counts_come_back_on_every_refusal(gateway, two_tenants):
    """One concurrent request allowed: a 400 by characters, a 400 by tokens and a tpm 429
    each give the slot back; tokens count only for the request that ran."""
    app, state = gateway
    key = two_tenants.add_key("acme", "one-slot", limits=Limits(max_concurrent=1, tpm=2_000))
    spy = spy_on(state)
    async with client_for(app) as client:

        async def post(content: str, max_tokens: int) -> httpx.Response:
            body = chat(content, model=state.model_id, max_tokens=max_tokens)
            return await client.post("/v1/chat/completions", json=body, headers=key.headers)

        by_chars = await post("z" * 1_000_000, 5)  # the counting backend: 4,096 tokens
        assert by_chars.json()["error"]["code"] == "context_length_exceeded"
        assert spy.texts == []
        by_tokens = await post("hello", 4_090)  # its characters could fit; its tokens do not
        assert by_tokens.json()["error"]["code"] == "context_length_exceeded"
        assert len(spy.texts) == 1
        too_large = await post(LONG, 1_500)
        assert too_large.status_code == 429 and "Request too large" in too_large.text
        ok = await post("hello", 5)
        assert ok.status_code == 200, ok.text
    window = app.state.gateway.limiter._windows[f"key:{key.key_id}"]
    assert window.num_active == 0
    assert window.num_tokens == ok.json()["usage"]["total_tokens"]
    rows = [r for r in ledger(app) if r.key_id == key.key_id]
    assert [r.http_status for r in rows] == [400, 400, 429, 200]  # one row each: finish ran once
