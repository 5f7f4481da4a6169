"""A router alias over HTTP: each request runs the version whose training data is nearest
its prompt (a keyword embedding stands in for MiniLM, so the nearest is known), the base
model below the threshold; the answer names the pick in `ownllm_route` and the ledger row
names the adapter that ran. Bad routers are 400s naming the field; a routed version cannot
be deleted; another tenant's adapters cannot be routed to."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
from sqlalchemy import select, update

from ownllm.adapters.registry import delete_adapter
from ownllm.errors import ConflictError
from ownllm.models.embedding import LazyEmbeddingModel
from ownllm.store.schema import Adapter, UsageRecord
from tests.adapters.test_aliases import add_adapter
from tests.tenants import TenantKey

DOMAINS = {
    "billing": ["invoice", "refund", "charged", "payment", "card"],
    "code": ["python", "function", "error", "compile", "bug"],
    "cooking": ["recipe", "oven", "bake", "flour", "sauce"],
}
TRAINING = {
    "billing": ["Why was my card charged twice?", "I want a refund for this invoice",
                "The payment failed on my invoice", "Refund my last payment please"],
    "code": ["My python function throws an error", "Why does this compile error happen?",
             "Fix the bug in my python code", "The function has a bug"],
    "cooking": ["A recipe for tomato sauce", "How long do I bake bread in the oven?",
                "Can I use rye flour in this recipe?", "Oven temperature to bake a cake"],
}  # fmt: skip


class KeywordEmbedding:
    """One dimension per domain (its keywords counted) plus a small constant one."""

    dimensions = len(DOMAINS) + 1
    max_length = 256

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            words = text.lower().replace("?", " ").split()
            v = [float(sum(w in keys for w in words)) for keys in DOMAINS.values()] + [0.2]
            norm = math.sqrt(sum(x * x for x in v))
            out.append([x / norm for x in v])
        return out


class KeywordStatic(KeywordEmbedding):
    """A cruder stand-in for the static vectors: the constant dimension weighs more."""

    def embed(self, texts: list[str]) -> list[list[float] | None]:
        out = []
        for v in super().embed(texts):
            tilted = v[:-1] + [v[-1] + 0.3]
            norm = math.sqrt(sum(x * x for x in tilted))
            out.append([x / norm for x in tilted])
        return out


class CountingKeywordEmbedding(KeywordEmbedding):
    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.embedded += texts
        return super().embed(texts)


@pytest.fixture
async def api(gateway, two_tenants):
    app, state = gateway
    state.embedding_model = LazyEmbeddingModel(KeywordEmbedding())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, state


async def trained_on(client, db, key: TenantKey, name: str, prompts: list[str], base: str) -> str:
    """An adapter whose lineage names an uploaded training file of `prompts`."""
    lines = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
             for p in prompts * 3]  # fmt: skip
    content = "\n".join(json.dumps(line) for line in lines).encode()
    r = await client.post("/v1/files", files={"file": ("t.jsonl", content)},
                          data={"purpose": "fine-tune"}, headers=key.headers)  # fmt: skip
    assert r.status_code == 200, r.text
    adapter_id = add_adapter(db, key.tenant, name, base_model=base)
    with db.session() as s:
        s.execute(update(Adapter).where(Adapter.id == adapter_id).values(
            datasets=[{"file_id": r.json()["id"], "sha256": r.json().get("sha256", "")}]))  # fmt: skip
    return adapter_id


async def ledger_row(db, request_id: str) -> UsageRecord:
    for _ in range(1200):  # the ledger writes in the background: poll for the row
        with db.session() as s:
            row = s.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)).first()
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ledger row for {request_id}")


async def test_each_request_runs_the_version_nearest_its_prompt(api, two_tenants):
    client, state = api
    acme, db = two_tenants.a, two_tenants.db
    ids = {d: await trained_on(client, db, acme, d, TRAINING[d], state.model_id) for d in DOMAINS}
    body = {"name": "helpdesk", "router": {"versions": list(DOMAINS), "threshold": 0.5}}
    r = await client.post("/v1/aliases", json=body, headers=acme.headers)
    assert r.status_code == 200, r.text
    alias = r.json()
    assert alias["adapter_id"] is None and alias["router"]["threshold"] == 0.5
    assert [v["name"] for v in alias["router"]["versions"]] == list(DOMAINS)
    assert [v["num_examples"] for v in alias["router"]["versions"]] == [12, 12, 12]

    asked = {
        "billing": "I was charged for an invoice I cancelled",
        "code": "This python function has a bug",
        "cooking": "What sauce goes with this recipe?",
    }
    for domain, prompt in asked.items():
        chat = {"model": "helpdesk", "max_tokens": 3,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        r = await client.post("/v1/chat/completions", json=chat, headers=acme.headers)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "helpdesk"
        route = answer["ownllm_route"]
        assert route["adapter_id"] == ids[domain] and route["adapter"] == domain
        assert route["similarity"] > 0.5 and route["stage"] == "full"  # no static vectors
        assert [a.adapter_id for a in state.backend.requests[-1].adapters] == [ids[domain]]
        assert (await ledger_row(db, answer["id"])).adapter_id == ids[domain]

    # nothing near any version: the base model answers, and says so
    chat = {"model": "helpdesk", "max_tokens": 3,
            "messages": [{"role": "user", "content": "Tell me about the weather today"}]}  # fmt: skip
    answer = (await client.post("/v1/chat/completions", json=chat, headers=acme.headers)).json()
    assert answer["ownllm_route"]["adapter_id"] is None
    assert answer["ownllm_route"]["adapter"] == state.model_id
    assert state.backend.requests[-1].adapters == ()
    assert (await ledger_row(db, answer["id"])).adapter_id is None

    # completions route by their prompt; streamed chunks carry the pick too
    r = await client.post("/v1/completions", headers=acme.headers, json={
        "model": "helpdesk", "prompt": "bake it in the oven", "max_tokens": 2})  # fmt: skip
    assert r.json()["ownllm_route"]["adapter"] == "cooking"
    chat = {"model": "helpdesk", "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": "refund my payment"}]}  # fmt: skip
    r = await client.post("/v1/chat/completions", json=chat, headers=acme.headers)
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    assert {c["ownllm_route"]["adapter"] for c in chunks} == {"billing"}

    # a routed version stays while the router names it; the router is not promoted
    with pytest.raises(ConflictError):
        delete_adapter(db, state.data_dir, _Acme(), ids["code"])
    r = await client.post("/v1/aliases/helpdesk/promote", json={"to": "code"},
                          headers=acme.headers)  # fmt: skip
    assert r.status_code == 409 and "routes over its versions" in r.json()["error"]["message"]


async def test_a_router_without_a_threshold_calibrates_it_on_the_training_data(api, two_tenants):
    """No threshold sent: it is the 10th percentile of the training prompts' own
    leave-one-out scores, so prompts like them route and a prompt near none goes to base."""
    client, state = api
    acme, db = two_tenants.a, two_tenants.db
    ids = {d: await trained_on(client, db, acme, d, TRAINING[d], state.model_id) for d in DOMAINS}
    body = {"name": "helpdesk", "router": {"versions": list(DOMAINS)}}
    r = await client.post("/v1/aliases", json=body, headers=acme.headers)
    assert r.status_code == 200, r.text
    router = r.json()["router"]
    assert router["threshold_calibrated"] is True and 0.5 < router["threshold"] <= 1.0

    async def routed(prompt: str) -> dict:
        chat = {"model": "helpdesk", "max_tokens": 2,
                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        r = await client.post("/v1/chat/completions", json=chat, headers=acme.headers)
        assert r.status_code == 200, r.text
        return r.json()["ownllm_route"]

    # the stand-in embedding puts each training prompt (two keywords) on its domain's one
    # direction, so the calibrated threshold is near 1: a prompt like them routes
    assert (await routed("my card was charged"))["adapter_id"] == ids["billing"]
    assert (await routed("bake it in the oven"))["adapter_id"] == ids["cooking"]
    # one keyword: off the training prompts' direction (0.995), below that threshold
    assert (await routed("a refund"))["adapter_id"] is None
    assert (await routed("Tell me about the weather today"))["adapter_id"] is None
    # listed again (the index is read from the row once per process): the same router
    listed = (await client.get("/v1/aliases/helpdesk", headers=acme.headers)).json()
    assert listed["router"] == router


async def test_a_clear_prompt_is_routed_by_its_static_vector_without_the_full_forward(
    gateway, two_tenants
):
    app, state = gateway
    full = CountingKeywordEmbedding()
    state.embedding_model = LazyEmbeddingModel(full, static=KeywordStatic())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    acme, db = two_tenants.a, two_tenants.db
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ids = {d: await trained_on(client, db, acme, d, TRAINING[d], state.model_id)
               for d in DOMAINS}  # fmt: skip
        body = {"name": "helpdesk", "router": {"versions": list(DOMAINS)}}
        r = await client.post("/v1/aliases", json=body, headers=acme.headers)
        assert r.status_code == 200, r.text
        full.embedded.clear()

        async def routed(prompt: str) -> dict:
            chat = {"model": "helpdesk", "max_tokens": 2,
                    "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
            r = await client.post("/v1/chat/completions", json=chat, headers=acme.headers)
            assert r.status_code == 200, r.text
            return r.json()

        answer = await routed("my card was charged")
        assert answer["ownllm_route"]["adapter_id"] == ids["billing"]
        assert answer["ownllm_route"]["stage"] == "static" and full.embedded == []
        assert [a.adapter_id for a in state.backend.requests[-1].adapters] == [ids["billing"]]
        assert (await ledger_row(db, answer["id"])).adapter_id == ids["billing"]
        # a close call between two versions: the full forward decides
        answer = await routed("a python recipe")
        assert answer["ownllm_route"]["stage"] == "full"
        assert full.embedded == ["a python recipe"]


class _Acme:
    tenant_id, is_admin = "acme", False

    def can_see(self, owner: str, is_public: bool = False) -> bool:
        return owner == "acme" or is_public


async def test_bad_routers_are_400s_naming_the_field(api, two_tenants):
    client, state = api
    acme, db = two_tenants.a, two_tenants.db
    await trained_on(client, db, acme, "billing", TRAINING["billing"], state.model_id)
    add_adapter(db, "acme", "untrained", base_model=state.model_id)  # no datasets

    async def refused(router, status=400, **extra) -> dict:
        body = {"name": "helpdesk", "router": router, **extra}
        r = await client.post("/v1/aliases", json=body, headers=acme.headers)
        assert r.status_code == status, r.text
        return r.json()["error"]

    assert (await refused({"versions": []}))["param"] == "router.versions"
    assert (await refused({"versions": ["billing", "billing"]}))["param"] == "router.versions"
    assert (await refused({"versions": ["billing"], "threshold": 2}))["param"] == (
        "router.threshold"
    )
    assert (await refused({"versions": ["billing"], "x": 1}))["param"] == "router.x"
    assert (await refused("billing"))["param"] == "router"
    error = await refused({"versions": ["billing", "untrained"]})
    assert error["param"] == "router.versions[1]" and "no training data" in error["message"]
    assert (await refused({"versions": ["base"]}))["param"] == "router.versions[0]"
    assert (await refused({"versions": ["nope"]}, status=404))["param"] == "router.versions[0]"
    assert (await refused({"versions": ["billing"]}, target="billing"))["param"] == "target"
    # another tenant's adapter does not exist for this one
    globex = {"name": "theirs", "router": {"versions": ["billing"]}}
    r = await client.post("/v1/aliases", json=globex, headers=two_tenants.b.headers)
    assert r.status_code == 404 and r.json()["error"]["param"] == "router.versions[0]"
