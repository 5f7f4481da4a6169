"""Limits and the usage ledger on the real inference routes (a scripted backend stands in for
the engine): 429s under concurrency, one ledger row per request — ok, error, cancelled,
disconnected — whose tokens match what the client saw."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.backends.scripted import counting_backend
from ownllm.gateway.principal import Limits
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.schema import UsageRecord
from tests.tenants import gateway_state


@pytest.fixture
def make_app(tmp_path, tiny_model_dir, two_tenants):
    apps = []

    def make(**cues):
        tokenizer = Tokenizer.from_dir(tiny_model_dir)
        state = gateway_state(tmp_path, two_tenants, backend=counting_backend(tokenizer, **cues))
        state.tokenizer = tokenizer
        apps.append(create_app(state, start_engine=False))
        return apps[-1], state

    yield make
    for app in apps:
        app.state.gateway.ledger.close()


def rows(app) -> list[UsageRecord]:
    from sqlalchemy import select

    app.state.gateway.ledger.flush()
    with app.state.ownllm.db.session() as session:
        return list(session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


def chat(state, max_tokens=5, **kw) -> dict:
    body = {"model": state.model_id, "messages": [{"role": "user", "content": "hi"}]}
    return {**body, "max_tokens": max_tokens, **kw}


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_ok_rows_match_the_usage_the_client_saw(make_app, two_tenants):
    app, state = make_app()
    a = two_tenants.a
    async with client_for(app) as client:
        plain = await client.post("/v1/chat/completions", json=chat(state, 7), headers=a.headers)
        stream = await client.post(
            "/v1/chat/completions",
            json=chat(state, 4, stream=True, stream_options={"include_usage": True}),
            headers=a.headers,
        )
    assert plain.status_code == 200 and stream.status_code == 200
    events = [
        json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")
    ]
    stream_usage = events[-1]["usage"]
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    first, second = rows(app)
    assert (first.status, first.tenant_id, first.key_id) == ("ok", "acme", a.key_id)
    seen = plain.json()["usage"]
    assert (first.prompt_tokens, first.completion_tokens) == (
        seen["prompt_tokens"],
        seen["completion_tokens"],
    ) and first.completion_tokens == 7
    assert (second.prompt_tokens, second.completion_tokens) == (
        stream_usage["prompt_tokens"],
        stream_usage["completion_tokens"],
    )
    assert second.completion_tokens == len(content.split()) == 4
    assert first.latency_ms > 0 and first.ttft_ms is not None and first.day


async def test_fifty_parallel_requests_against_rpm_ten(make_app, two_tenants):
    app, state = make_app()
    limited = two_tenants.add_key("acme", "limited", limits=Limits(rpm=10))
    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=chat(state, 2), headers=limited.headers)
                for _ in range(50)
            )
        )
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 40
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    ledger = rows(app)
    assert [r.status for r in ledger].count("ok") == 10
    assert {(r.status, r.http_status, r.error_code) for r in ledger if r.status != "ok"} == {
        ("error", 429, "rate_limit_exceeded")
    }
    assert sum(r.prompt_tokens for r in ledger if r.status != "ok") == 0  # refused: free


async def test_monthly_budget_gives_insufficient_quota(make_app, two_tenants):
    app, state = make_app()
    budget = two_tenants.add_key("globex", "budget", limits=Limits(monthly_tokens=200))
    async with client_for(app) as client:
        first = await client.post(
            "/v1/chat/completions", json=chat(state, 100), headers=budget.headers
        )
        second = await client.post(
            "/v1/chat/completions", json=chat(state, 180), headers=budget.headers
        )
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert int(second.headers["Retry-After"]) > 0
    used = first.json()["usage"]["total_tokens"]
    gateway = app.state.gateway
    gateway.ledger.flush()  # the settlement rides the ledger's next batch
    assert gateway.limiter.used_tokens(f"key:{budget.key_id}") == used


async def test_large_budget_is_leased_and_exact_after_shutdown(make_app, two_tenants):
    app, state = make_app()
    gateway = app.state.gateway
    key = two_tenants.add_key("globex", "big", limits=Limits(monthly_tokens=10**9))
    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=chat(state, 5), headers=key.headers)
                for _ in range(10)
            )
        )
    assert [r.status_code for r in responses] == [200] * 10
    used = sum(r.json()["usage"]["total_tokens"] for r in responses)
    counter = f"key:{key.key_id}"
    assert gateway.limiter.used_tokens(counter) > used  # this replica still holds a lease
    gateway.close()  # what the server does at shutdown
    assert gateway.limiter.used_tokens(counter) == used


async def test_failed_and_cancelled_requests_have_rows(make_app, two_tenants):
    app, state = make_app(abort_after=3)
    headers = two_tenants.b.headers
    async with client_for(app) as client:
        too_long = await client.post(
            "/v1/chat/completions", json=chat(state, 10**6), headers=headers
        )
        aborted = await client.post("/v1/chat/completions", json=chat(state, 10), headers=headers)
    assert too_long.status_code == 400 and aborted.status_code == 503
    error, cancelled = rows(app)
    assert (error.status, error.http_status, error.error_code) == (
        "error",
        400,
        "context_length_exceeded",
    )
    assert error.tenant_id == "globex" and error.prompt_tokens == error.completion_tokens == 0
    assert (cancelled.status, cancelled.completion_tokens) == ("cancelled", 3)


def test_disconnected_stream_has_a_row_with_what_was_generated(make_app, two_tenants):
    from tests.server import serve_app

    # 500 tokens take over two minutes: only the hang-up ends this stream in time
    app, state = make_app(delay_s=0.25)
    with serve_app(app) as base_url:
        seen = 0
        with httpx.stream(
            "POST",
            f"{base_url}/v1/chat/completions",
            json=chat(state, 500, stream=True),
            headers=two_tenants.a.headers,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content":"tok' in line:
                    seen += 1
                if seen == 3:
                    break
        deadline = time.monotonic() + 120
        while not rows(app) and time.monotonic() < deadline:
            time.sleep(0.05)
        [row] = rows(app)
    assert row.status == "disconnected" and row.tenant_id == "acme"
    assert seen <= row.completion_tokens < 500
