"""Every inference route of the app is limited and metered: the walk below finds them all
and proves it for each with real requests, so a new route cannot skip the one path
(`ownllm.api.inference.serve`).

Which routes are inference routes: every route that requires the `inference` scope
(`require_scope("inference")`, however deep in its dependencies) or carries the
`inference` tag. A route that runs a model for a key must check that scope, or a key
issued only for files could run the model, so it is the one mark such a route cannot go
without; the tag is the second mark, for the docs. Each route found must have an example
request in EXAMPLES, and is then proved limited (429 with Retry-After once a 1-rpm key
used its request) and metered (one ledger row per request, tokens as the client saw
them), or be named in NOT_INFERENCE with the reason it reaches no model. A route in
neither fails the walk.
"""

from __future__ import annotations

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute

from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Limits
from ownllm.store.schema import UsageRecord

EXAMPLES = {  # the smallest request that reaches the backend; "model" defaults to the base
    ("POST", "/v1/chat/completions"): {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    ("POST", "/v1/completions"): {"prompt": "hi", "max_tokens": 2},
    ("POST", "/v1/embeddings"): {"model": "all-minilm-l6-v2", "input": "hi there"},
    ("POST", "/v1/responses"): {"input": "hi", "max_output_tokens": 2},
    ("POST", "/v1/vector_stores/{vector_store_id}/search"): {"query": "hi there"},
}
STORED = "reads or edits the tenant's stored completions; reaches no model"
BATCHES = (
    "creates, reads or cancels a batch; its lines reach the model later, each through "
    "ownllm.api.inference.serve (tests/api/test_batches.py proves them metered)"
)
EVALS = (
    "evals and their runs as rows; a run's items reach the model through the eval worker's serve"
)
NOT_INFERENCE = {
    **{
        (method, f"/v1/evals{path}"): EVALS
        for method, path in [
            ("POST", ""),
            ("GET", ""),
            ("GET", "/{eval_id}"),
            ("POST", "/{eval_id}"),
            ("DELETE", "/{eval_id}"),
            ("POST", "/{eval_id}/runs"),
            ("GET", "/{eval_id}/runs"),
            ("GET", "/{eval_id}/runs/{run_id}"),
            ("POST", "/{eval_id}/runs/{run_id}"),
            ("DELETE", "/{eval_id}/runs/{run_id}"),
            ("GET", "/{eval_id}/runs/{run_id}/output_items"),
            ("GET", "/{eval_id}/runs/{run_id}/output_items/{item_id}"),
        ]
    },  # fmt: skip
    ("GET", "/v1/dashboard/evals/{eval_id}/compare"): EVALS,
    ("POST", "/v1/redteam/runs"): EVALS,
    ("GET", "/v1/redteam/runs/{run_id}"): EVALS,
    ("POST", "/v1/batches"): BATCHES,
    ("GET", "/v1/batches"): BATCHES,
    ("GET", "/v1/batches/{batch_id}"): BATCHES,
    ("POST", "/v1/batches/{batch_id}/cancel"): BATCHES,
    ("GET", "/v1/chat/completions"): STORED,
    ("GET", "/v1/chat/completions/{completion_id}"): STORED,
    ("GET", "/v1/chat/completions/{completion_id}/messages"): STORED,
    ("POST", "/v1/chat/completions/{completion_id}"): STORED,
    ("DELETE", "/v1/chat/completions/{completion_id}"): STORED,
    ("POST", "/v1/chat/completions/{completion_id}/feedback"): STORED,
    ("GET", "/v1/responses/{response_id}"): "reads the tenant's stored responses",
    ("DELETE", "/v1/responses/{response_id}"): "deletes a stored response",
    ("GET", "/v1/responses/{response_id}/input_items"): "reads a stored response's input",
}


def _scopes(dependant) -> set[str]:
    found = {dependant.call.scope} if hasattr(dependant.call, "scope") else set()
    for sub in dependant.dependencies:
        found |= _scopes(sub)
    return found


def inference_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route that needs the inference scope or is tagged so."""
    # FastAPI >= 0.16x keeps included routers nested; older versions list routes flat
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    found = set()
    for route in walk(app.routes) if walk else app.routes:
        if not isinstance(getattr(route, "original_route", route), APIRoute):
            continue
        if "inference" in _scopes(route.dependant) or "inference" in (route.tags or ()):
            found |= {(method, route.path) for method in route.methods}
    return found


def ledger(app) -> list[UsageRecord]:
    """The ledger rows the app's gateway wrote, once its queue is written."""
    from sqlalchemy import select

    app.state.gateway.ledger.flush()
    with app.state.ownllm.db.session() as session:
        return list(session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


async def prove_limited_and_metered(client, app, key, method: str, path: str, body: dict):
    first = await client.request(method, path, json=body, headers=key.headers)
    second = await client.request(method, path, json=body, headers=key.headers)
    where = f"{method} {path}"
    assert first.status_code == 200, f"{where}: {first.text}"
    assert second.status_code == 429, f"{where} is not limited: a 1-rpm key got {second}"
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(second.headers["Retry-After"]) <= 60
    rows = [r for r in ledger(app) if r.key_id == key.key_id]
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200), ("error", 429)], (
        f"{where} is not metered: ledger rows {rows}"
    )
    # vector store search reports its tokens in a header (OpenAI's page allows no `usage`);
    # the Responses API counts input and output tokens
    usage = first.json().get("usage") or {
        "prompt_tokens": int(first.headers["x-ownllm-prompt-tokens"])
    }
    assert rows[0].prompt_tokens == usage.get("prompt_tokens", usage.get("input_tokens")) > 0
    assert rows[0].completion_tokens == usage.get(
        "completion_tokens", usage.get("output_tokens", 0)
    )


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_every_inference_route_is_limited_and_metered(gateway, two_tenants):
    app, state = gateway
    routes = inference_routes(app)
    unknown = sorted(routes - EXAMPLES.keys() - NOT_INFERENCE.keys())
    assert not unknown, (
        f"{unknown} need the inference scope: serve them through ownllm.api.inference.serve "
        "and add an example request to EXAMPLES, or say in NOT_INFERENCE why they reach no model"
    )
    stale = sorted((EXAMPLES.keys() | NOT_INFERENCE.keys()) - routes)
    assert not stale, f"{stale} are no longer inference routes (or the walk missed them)"
    async with client_for(app) as client:
        store = await client.post("/v1/vector_stores", json={}, headers=two_tenants.a.headers)
        ids = {"vector_store_id": store.json()["id"]}  # path parameters: an object of acme's
        for i, (method, path) in enumerate(sorted(EXAMPLES)):
            key = two_tenants.add_key("acme", f"one-rpm-{i}", limits=Limits(rpm=1))
            body = {"model": state.model_id, **EXAMPLES[(method, path)]}
            url = path.format(**ids)
            await prove_limited_and_metered(client, app, key, method, url, body)


async def test_the_walk_catches_a_route_that_bypasses_the_path(gateway, two_tenants):
    app, _ = gateway
    bypass = APIRouter(prefix="/v1")

    @bypass.post("/shortcut")
    async def answer_without_the_gateway(principal=Depends(require_scope("inference"))) -> dict:
        return {"usage": {"prompt_tokens": 1}}

    app.include_router(bypass)
    assert ("POST", "/v1/shortcut") in inference_routes(app) - EXAMPLES.keys()
    key = two_tenants.add_key("acme", "one-rpm", limits=Limits(rpm=1))
    async with client_for(app) as client:
        with pytest.raises(AssertionError, match="is not limited"):
            await prove_limited_and_metered(client, app, key, "POST", "/v1/shortcut", {})
