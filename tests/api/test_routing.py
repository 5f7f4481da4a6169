"""An app over a Router of two ScriptedBackend replicas: what a client and an operator see
of routing (the answer, the status, the SSE error event, /ready, /metrics, the ledger)."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
from sqlalchemy import select

from ownllm.api.app import create_app
from ownllm.backends.scripted import counting_backend
from ownllm.config import RoutingConfig
from ownllm.gateway.routing import Replica, Router
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.schema import UsageRecord
from tests.tenants import gateway_state


@pytest.fixture
async def routed(tmp_path, tiny_model_dir, two_tenants):
    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    replicas = [Replica(f"cpu-{i}", counting_backend(tokenizer)) for i in range(2)]
    router = Router(replicas, RoutingConfig(strategy="round_robin"), tokenizer=tokenizer)
    state = gateway_state(tmp_path, two_tenants, backend=router)
    state.tokenizer = tokenizer
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, app, {r.name: r for r in replicas}, two_tenants
    app.state.gateway.ledger.close()


def chat(state, **extra):
    body = {"model": state.model_id, "messages": [{"role": "user", "content": "Hi"}]}
    return {**body, "max_tokens": 4, **extra}


def ledger(app) -> list[UsageRecord]:
    app.state.gateway.ledger.flush()
    with app.state.ownllm.db.session() as session:
        return list(session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(key):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


async def test_requests_spread_and_metrics_count_them_per_replica(routed):
    client, app, replicas, tenants = routed
    state = app.state.ownllm
    for _ in range(4):
        r = await client.post("/v1/chat/completions", json=chat(state), headers=tenants.a.headers)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
    assert [len(r.backend.requests) for r in replicas.values()] == [2, 2]
    text = (await client.get("/metrics")).text
    assert metric(text, "ownllm_routed_requests_total", replica="cpu-0") == 2
    assert metric(text, "ownllm_replica_state", replica="cpu-1", state="healthy") == 1


async def test_a_replica_failing_before_the_first_token_is_invisible_to_the_client(routed):
    client, app, replicas, tenants = routed
    replicas["cpu-0"].backend.fail_after = 0
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=chat(app.state.ownllm),
                              headers=tenants.a.headers)  # fmt: skip
        assert r.status_code == 200
    text = (await client.get("/metrics")).text
    tried = len(replicas["cpu-0"].backend.requests)
    assert tried >= 1 and metric(text, "ownllm_routing_retries_total", replica="cpu-0") == tried
    assert [row.status for row in ledger(app)] == ["ok", "ok"]


async def test_a_stream_broken_mid_way_ends_with_an_error_event_and_an_error_row(routed):
    client, app, replicas, tenants = routed
    for r in replicas.values():
        r.backend.fail_after = 2
    body = chat(app.state.ownllm, stream=True)
    r = await client.post("/v1/chat/completions", json=body, headers=tenants.a.headers)
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if "choices" in e)
    assert text == "tok0 tok1 "
    assert events[-1]["error"]["code"] == "replica_failed"
    assert "[DONE]" not in r.text  # never a stream that looks complete
    (row,) = ledger(app)
    assert (row.status, row.http_status, row.error_code) == ("error", 502, "replica_failed")
    assert row.completion_tokens == 2


async def test_ready_lists_each_replica_and_fails_when_none_is_healthy(routed):
    client, app, replicas, _ = routed
    router = app.state.ownllm.backend
    replicas["cpu-1"].backend.is_healthy = False
    await router.check_now()
    r = await client.get("/ready")
    assert r.status_code == 200
    assert {s["name"]: s["state"] for s in r.json()["replicas"]} == {
        "cpu-0": "healthy",
        "cpu-1": "down",
    }
    replicas["cpu-0"].backend.is_healthy = False
    await router.check_now()
    r = await client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"
    text = (await client.get("/metrics")).text
    assert metric(text, "ownllm_replica_state", replica="cpu-0", state="down") == 1


async def test_no_healthy_replica_is_a_503_in_the_openai_shape(routed):
    client, app, replicas, tenants = routed
    for r in replicas.values():
        r.backend.is_healthy = False
    await app.state.ownllm.backend.check_now()
    r = await client.post("/v1/chat/completions", json=chat(app.state.ownllm),
                          headers=tenants.a.headers)  # fmt: skip
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_healthy_replica"
    assert r.headers.get("retry-after") == "5"


def _state_with(tmp_path, tokenizer, backends, policy=()):
    from ownllm.api.state import AppState
    from ownllm.config import load_config
    from ownllm.store.blobs import DataDir

    overrides = {"store": {"data_dir": str(tmp_path)}, "model": {"name": "tiny"},
                 "backends": backends}  # fmt: skip
    config = load_config(env={}, overrides=overrides)
    config = dataclasses.replace(config, routing=RoutingConfig(policy=tuple(policy)))
    return AppState(config, DataDir(tmp_path).ensure(), tokenizer=tokenizer)


def test_several_backends_or_a_remote_one_go_behind_a_router(tmp_path, tiny_model_dir):
    from ownllm.api.app import start_backend
    from ownllm.backends.openai_compat import OpenAIBackend
    from ownllm.config import ConfigError, HybridPolicy

    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    one = [{"kind": "openai", "url": "http://127.0.0.1:9", "name": "fleet"}]
    assert isinstance(start_backend(_state_with(tmp_path, tokenizer, one)), OpenAIBackend)
    two = [*one, {"kind": "openai", "url": "http://127.0.0.1:10", "name": "paid", "remote": True}]
    router = start_backend(_state_with(tmp_path, tokenizer, two))
    assert isinstance(router, Router)
    assert [(r.name, r.is_remote) for r in router.replicas] == [("fleet", False), ("paid", True)]
    remote_only = [{**two[1]}]
    with pytest.raises(ConfigError, match="every backend is remote"):
        start_backend(_state_with(tmp_path, tokenizer, remote_only))
    route = HybridPolicy(model="gpt-4o-mini", mode="route", remote="paid")
    assert isinstance(start_backend(_state_with(tmp_path, tokenizer, remote_only, [route])), Router)
    wrong = HybridPolicy(mode="overflow", remote="fleet")  # not a remote backend
    with pytest.raises(ConfigError, match="remote = true"):
        start_backend(_state_with(tmp_path, tokenizer, two, [wrong]))


async def test_a_routed_remote_model_is_served_there_priced_and_only_for_its_tenant(
    tmp_path, tiny_model_dir, two_tenants
):
    from ownllm.config import HybridPolicy
    from ownllm.gateway.cost import load_price_table, observed_traffic

    tokenizer = Tokenizer.from_dir(tiny_model_dir)
    local = Replica("cpu-0", counting_backend(tokenizer))
    paid = Replica("paid", counting_backend(tokenizer), is_remote=True)
    policy = HybridPolicy(tenant="acme", model="gpt-4o-mini", mode="route", remote="paid")
    router = Router([local, paid], RoutingConfig(policy=(policy,)), tokenizer=tokenizer)
    state = gateway_state(tmp_path, two_tenants, backend=router)
    state.tokenizer = tokenizer
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        body = {**chat(state), "model": "gpt-4o-mini"}
        r = await client.post("/v1/chat/completions", json=body, headers=two_tenants.a.headers)
        assert r.status_code == 200 and r.json()["model"] == "gpt-4o-mini"
        r = await client.post("/v1/chat/completions", json=body, headers=two_tenants.b.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await client.post(
            "/v1/chat/completions", json=chat(state), headers=two_tenants.a.headers
        )
        assert r.status_code == 200
    assert len(paid.backend.requests) == 1 and len(local.backend.requests) == 1
    rows = [row for row in ledger(app) if row.status == "ok"]
    app.state.gateway.ledger.close()
    price = next(a for a in load_price_table().apis if a.name == "gpt-4o-mini")
    remote, served_here = rows
    assert (remote.model, remote.backend, remote.remote) == ("gpt-4o-mini", "paid", True)
    assert remote.remote_cost_usd == pytest.approx(
        price.cost(remote.prompt_tokens, remote.completion_tokens)
    )
    assert remote.remote_cost_usd > 0
    assert (served_here.backend, served_here.remote, served_here.remote_cost_usd) == (
        "cpu-0", False, None,
    )  # fmt: skip
    traffic = observed_traffic(two_tenants.db)
    assert traffic.remote_requests == 1
    assert traffic.remote_cost_usd == pytest.approx(remote.remote_cost_usd)
    assert traffic.local_tokens == served_here.prompt_tokens + served_here.completion_tokens


async def test_metrics_show_the_conversations_the_router_saw_continue(routed):
    client, app, replicas, tenants = routed
    state = app.state.ownllm
    first = " ".join(f"word{i}" for i in range(60))
    ids = state.tokenizer.encode(first)
    full = len(ids) // 16 * 16
    second = first + " and one more question"
    assert state.tokenizer.encode(second)[:full] == ids[:full]  # the same full blocks
    text = (await client.get("/metrics")).text
    assert metric(text, "ownllm_routing_conversation_continued_share") == 0
    for prompt in (first, second):
        body = {"model": state.model_id, "prompt": prompt, "max_tokens": 2}
        r = await client.post("/v1/completions", json=body, headers=tenants.a.headers)
        assert r.status_code == 200, r.text
    text = (await client.get("/metrics")).text
    assert metric(text, "ownllm_routing_conversation_continued_share") == 0.5  # 1 of 1, + 1
    assert metric(text, "ownllm_routing_conversation_think_seconds") > 0
    counts = [metric(text, "ownllm_replica_open_conversations", replica=n) for n in replicas]
    assert all(0 <= c <= 0.5 for c in counts)  # at most the one answer open, decaying
