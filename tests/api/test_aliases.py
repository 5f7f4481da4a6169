"""/v1/aliases over HTTP: clients call the alias, /v1/models lists it, a request in flight
finishes on its version while a promotion lands, gates refuse with their figures, and
another tenant's alias is a 404 everywhere."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from tests.adapters.test_aliases import add_adapter

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def api(gateway, two_tenants):
    app, state = gateway
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, state


async def test_clients_call_the_alias_and_models_list_it(api, two_tenants):
    client, state = api
    acme = two_tenants.a.headers
    v1 = add_adapter(two_tenants.db, "acme", "support-v1", base_model=state.model_id)
    r = await client.post(
        "/v1/aliases", json={"name": "support", "target": "support-v1"}, headers=acme
    )
    assert r.status_code == 200, r.text
    alias = r.json()
    assert alias["target"] == "support-v1" and alias["adapter_id"] == v1 and alias["version"] == 1

    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "support"}, headers=acme)
    assert r.status_code == 200 and r.json()["model"] == "support"
    assert [a.adapter_id for a in state.backend.requests[-1].adapters] == [v1]

    models = (await client.get("/v1/models", headers=acme)).json()["data"]
    listed = next(m for m in models if m["id"] == "support")
    assert listed["alias"]["target"] == "support-v1" and listed["adapter_id"] == v1
    assert (await client.get("/v1/models/support", headers=acme)).json()["alias"]["version"] == 1

    # the base model as a version: an alias of it runs no adapter
    r = await client.post("/v1/aliases", json={"name": "plain"}, headers=acme)
    assert r.json()["target"] == state.model_id and r.json()["adapter_id"] is None
    await client.post("/v1/chat/completions", json={**CHAT, "model": "plain"}, headers=acme)
    assert state.backend.requests[-1].adapters == ()


async def test_a_request_in_flight_finishes_on_its_version(api, two_tenants):
    client, state = api
    acme = two_tenants.a.headers
    v1 = add_adapter(two_tenants.db, "acme", "v1", base_model=state.model_id)
    v2 = add_adapter(two_tenants.db, "acme", "v2", base_model=state.model_id)
    await client.post("/v1/aliases", json={"name": "support", "target": "v1"}, headers=acme)
    backend = state.backend
    backend.gate = threading.Semaphore(0)  # the first token, then hold
    body = {**CHAT, "model": "support", "max_tokens": 4}
    first = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=acme))
    for _ in range(12000):  # poll for the condition, generous deadline
        if backend.running:
            break
        await asyncio.sleep(0.01)
    assert backend.running, "the first request never started"

    r = await client.post("/v1/aliases/support/promote", json={"to": "v2"}, headers=acme)
    assert r.status_code == 200 and r.json()["adapter_id"] == v2 and r.json()["version"] == 2
    backend.gate.release(100)
    r1 = await asyncio.wait_for(first, timeout=120)
    assert r1.status_code == 200 and r1.json()["usage"]["completion_tokens"] == 4
    assert [a.adapter_id for a in backend.requests[0].adapters] == [v1]
    await client.post("/v1/chat/completions", json=body, headers=acme)
    assert [a.adapter_id for a in backend.requests[-1].adapters] == [v2]

    r = await client.post("/v1/aliases/support/rollback", headers=acme)
    assert r.json()["adapter_id"] == v1 and r.json()["version"] == 3
    moves = (await client.get("/v1/aliases/support/moves", headers=acme)).json()["data"]
    assert [(m["action"], m["actor"]) for m in moves] == [
        ("create", two_tenants.a.key_id),
        ("promote", two_tenants.a.key_id),
        ("rollback", two_tenants.a.key_id),
    ]


async def test_the_gate_refuses_with_its_figures(api, two_tenants):
    client, state = api
    acme = two_tenants.a.headers
    add_adapter(two_tenants.db, "acme", "v2", base_model=state.model_id)
    gate = {"evals": [{"eval": "support-holdout", "min_pass_rate": 0.8}],
            "max_redteam_success_rate": 0.05}  # fmt: skip
    r = await client.post("/v1/aliases", json={"name": "support", "gate": gate}, headers=acme)
    assert r.json()["gate"] == {
        **gate,
        "evals": [{"eval": "support-holdout", "min_pass_rate": 0.8}],
    }
    r = await client.post("/v1/aliases/support/promote", json={"to": "v2"}, headers=acme)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "gate_refused" and error["param"] == "to"
    assert "no completed run of eval 'support-holdout' on v2" in error["message"]
    assert "no completed red-team run on v2" in error["message"]
    assert (await client.get("/v1/aliases/support", headers=acme)).json()["adapter_id"] is None
    moves = (await client.get("/v1/aliases/support/moves", headers=acme)).json()["data"]
    assert moves[-1]["action"] == "refused" and moves[-1]["gate"]["passed"] is False

    bad = await client.post("/v1/aliases/support", json={"gate": {"evals": [{}]}}, headers=acme)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "gate.evals[0]"
    r = await client.post("/v1/aliases/support", json={"gate": None}, headers=acme)
    assert r.json()["gate"] == {"evals": [], "max_redteam_success_rate": None}
    r = await client.post("/v1/aliases/support/promote", json={"to": "v2"}, headers=acme)
    assert r.status_code == 200


async def test_another_tenants_alias_is_a_404_everywhere(api, two_tenants):
    client, state = api
    acme, globex = two_tenants.a.headers, two_tenants.b.headers
    add_adapter(two_tenants.db, "acme", "v1", base_model=state.model_id)
    await client.post("/v1/aliases", json={"name": "support", "target": "v1"}, headers=acme)
    for method, path, body in [
        ("GET", "/v1/aliases/support", None),
        ("POST", "/v1/aliases/support", {"gate": None}),
        ("POST", "/v1/aliases/support/promote", {"to": "base"}),
        ("POST", "/v1/aliases/support/rollback", None),
        ("GET", "/v1/aliases/support/moves", None),
        ("DELETE", "/v1/aliases/support", None),
        ("GET", "/v1/models/support", None),
    ]:
        r = await client.request(method, path, json=body, headers=globex)
        assert r.status_code == 404, (method, path, r.text)
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "support"}, headers=globex)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert (await client.get("/v1/aliases", headers=globex)).json()["data"] == []
    # globex cannot point its own alias at acme's adapter either
    r = await client.post("/v1/aliases", json={"name": "mine", "target": "v1"}, headers=globex)
    assert r.status_code == 404
    r = await client.delete("/v1/aliases/support", headers=acme)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert (await client.get("/v1/aliases/support", headers=acme)).status_code == 404
