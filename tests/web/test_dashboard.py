"""`/v1/dashboard/*`: who am I, usage over time, cost share, and training-file problems —
each scoped to the caller's tenant (the admin sees all)."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.gateway.usage import UsageRow
from ownllm.tuning.files import save_bytes
from ownllm.web.dashboard import percentiles
from tests.tenants import gateway_state


@asynccontextmanager
async def dashboard_client(tmp_path, two_tenants, **cost):
    """A client of the app on the tenants' database, with these `cost` settings."""
    state = gateway_state(tmp_path, two_tenants)
    state.config = replace(state.config, cost=replace(state.config.cost, **cost))
    app = create_app(state, start_engine=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.state, c.gateway = state, app.state.gateway
        yield c
    app.state.gateway.ledger.close()


@pytest.fixture
async def client(tmp_path, two_tenants):
    async with dashboard_client(tmp_path, two_tenants) as c:
        yield c


def _rows(tenant: str, key_id: str, model: str, latencies: list[float], at: float) -> list:
    return [
        UsageRow(
            request_id=f"r-{tenant}-{i}",
            tenant_id=tenant,
            key_id=key_id,
            endpoint="/v1/chat/completions",
            model=model,
            status="ok",
            prompt_tokens=10,
            completion_tokens=5,
            latency_ms=latency,
            ttft_ms=latency / 10,
            created_at=at - i,
        )
        for i, latency in enumerate(latencies)
    ]


async def test_me_names_the_tenant_and_refuses_a_bad_key(client, two_tenants):
    mine = (await client.get("/v1/dashboard/me", headers=two_tenants.a.headers)).json()
    assert mine["tenant"] == "acme" and mine["key_id"] == two_tenants.a.key_id
    assert not mine["is_admin"] and not mine["open_mode"] and "inference" in mine["scopes"]
    admin = (await client.get("/v1/dashboard/me", headers=two_tenants.admin_headers)).json()
    assert admin["is_admin"]
    refused = await client.get("/v1/dashboard/me", headers={"Authorization": "Bearer sk-wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["type"]


async def test_usage_series_and_percentiles_are_tenant_scoped(client, two_tenants):
    now = time.time()
    ledger = client.gateway.ledger
    ledger.write_now(_rows("acme", two_tenants.a.key_id, "tiny", [100, 200, 300, 400], now - 60))
    ledger.write_now(_rows("globex", two_tenants.b.key_id, "other", [5000], now - 60))

    acme = await client.get(
        "/v1/dashboard/usage", params={"since": "1h"}, headers=two_tenants.a.headers
    )
    body = acme.json()
    assert acme.status_code == 200 and body["tenant"] == "acme"
    assert [s["name"] for s in body["series"]] == ["tiny"]
    assert sum(p["requests"] for p in body["series"][0]["points"]) == 4
    assert sum(p["tokens"] for p in body["series"][0]["points"]) == 60
    assert body["totals"]["requests"] == 4 and body["totals"]["total_tokens"] == 60
    assert body["latency_ms"] == {"p50": 200, "p90": 400, "p99": 400}
    assert body["bucket_seconds"] == 60

    everyone = await client.get(
        "/v1/dashboard/usage",
        params={"since": "1h", "by": "key"},
        headers=two_tenants.admin_headers,
    )
    names = {s["name"] for s in everyone.json()["series"]}
    assert names == {two_tenants.a.key_id, two_tenants.b.key_id}
    by_tenant = await client.get(
        "/v1/dashboard/usage", params={"by": "tenant"}, headers=two_tenants.admin_headers
    )
    assert [s["name"] for s in by_tenant.json()["series"]] == ["acme", "globex"]
    own = await client.get(
        "/v1/dashboard/usage", params={"by": "tenant"}, headers=two_tenants.b.headers
    )
    assert [s["name"] for s in own.json()["series"]] == ["globex"]


@pytest.mark.parametrize(
    ("params", "param"),
    [({"bucket": "week"}, "bucket"), ({"by": "colour"}, "by"), ({"since": "soon"}, "since")],
)
async def test_usage_rejects_bad_parameters_naming_them(client, two_tenants, params, param):
    response = await client.get("/v1/dashboard/usage", params=params, headers=two_tenants.a.headers)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_usage_refuses_too_many_buckets(client, two_tenants):
    response = await client.get(
        "/v1/dashboard/usage",
        params={"since": "30d", "bucket": "minute"},
        headers=two_tenants.a.headers,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "bucket"


def test_percentiles_are_nearest_rank():
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    assert percentiles([float(v) for v in range(1, 101)]) == {"p50": 50, "p90": 90, "p99": 99}


async def test_cost_prices_a_tenant_on_its_own_tokens(client, two_tenants):
    now = time.time()
    ledger = client.gateway.ledger
    ledger.write_now(_rows("acme", two_tenants.a.key_id, "tiny", [100] * 3, now - 60))
    ledger.write_now(_rows("globex", two_tenants.b.key_id, "tiny", [100], now - 60))

    acme = (await client.get("/v1/dashboard/cost", headers=two_tenants.a.headers)).json()
    server = (await client.get("/v1/dashboard/cost", headers=two_tenants.admin_headers)).json()
    assert acme["scope"] == "tenant" and server["scope"] == "server"
    assert (acme["prompt_tokens"], acme["completion_tokens"]) == (30, 15)
    assert (server["prompt_tokens"], server["completion_tokens"]) == (40, 20)
    assert server["self_hosted_cost"] > 0 and server["apis"][0]["savings"] is not None
    api = acme["apis"][0]
    expected = (30 * api["input_per_million"] + 15 * api["output_per_million"]) / 1e6
    assert api["cost"] == pytest.approx(expected, rel=1e-3)
    # no tenant price set: no self-hosted figure, which a share of the hardware would leak
    assert acme["self_hosted_cost"] is None and api["savings"] is None
    assert acme["utilisation"] is None and acme["cost_per_million"] is None


async def test_a_tenants_cost_view_reads_nothing_of_other_tenants_traffic(tmp_path, two_tenants):
    now = time.time()

    def without_clock(view: dict) -> dict:
        return {k: v for k, v in view.items() if k != "until"}

    async with dashboard_client(tmp_path, two_tenants, tenant_price_per_million=0.5) as client:
        ledger = client.gateway.ledger
        ledger.write_now(_rows("acme", two_tenants.a.key_id, "tiny", [100] * 3, now - 60))
        ledger.write_now(_rows("globex", two_tenants.b.key_id, "tiny", [100], now - 600))
        before = (await client.get("/v1/dashboard/cost", headers=two_tenants.a.headers)).json()
        globex = [
            replace(row, request_id=f"more-{i}", prompt_tokens=10_000)
            for i, row in enumerate(_rows("globex", two_tenants.b.key_id, "tiny", [100] * 50, now))
        ]
        ledger.write_now(globex)
        after = (await client.get("/v1/dashboard/cost", headers=two_tenants.a.headers)).json()
    assert without_clock(after) == without_clock(before)
    assert after["self_hosted_cost"] == pytest.approx(45 * 0.5 / 1e6)
    assert after["cost_per_million"] == 0.5
    assert after["since"] == pytest.approx(now - 60 - 2)  # acme's first request, not globex's
    api = after["apis"][0]
    assert api["savings"] == pytest.approx(api["cost"] - after["self_hosted_cost"])


async def test_file_problems_by_line_and_only_for_the_owner(client, two_tenants):
    good = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    text = "\n".join([good, "{broken", "", '{"messages": [{"role": "user", "content": "x"}]}'])
    row = save_bytes(
        client.state.db,
        client.state.data_dir,
        [text.encode()],
        tenant_id="acme",
        filename="train.jsonl",
        purpose="fine-tune",
    )
    mine = await client.get(f"/v1/dashboard/files/{row.id}/problems", headers=two_tenants.a.headers)
    body = mine.json()
    assert body["num_examples"] == 1 and body["num_problems"] == 2
    assert [p["line"] for p in body["problems"]] == [2, 4]
    assert "invalid JSON" in body["problems"][0]["reason"]
    assert "no assistant message" in body["problems"][1]["reason"]
    theirs = await client.get(
        f"/v1/dashboard/files/{row.id}/problems", headers=two_tenants.b.headers
    )
    assert theirs.status_code == 404


def _completed_run(db, viewer, eval_id: str, model: str, verdicts: list[bool]) -> str:
    """A completed run whose items got `verdicts` on criterion `right` (written as the eval
    worker writes them: the runner itself is tested in tests/api/test_evals.py)."""
    from ownllm.evals import store

    items = [{"item": {"q": f"q{i}"}, "sample": {"output_text": f"{model} says {ok}"}}
             for i, ok in enumerate(verdicts)]  # fmt: skip
    source = {"type": "jsonl", "source": {"type": "file_content", "content": items}}
    run = store.create_run(db, viewer, eval_id, data_source=source, adapter_id=None, name=model)
    claimed = store.claim_run(db, "w", 60)
    assert claimed.id == run["id"]
    for i, (entry, ok) in enumerate(zip(items, verdicts)):
        results = [{"name": "right", "type": "string_check", "passed": ok, "score": float(ok)}]
        sample = {"output": [{"role": "assistant", "content": entry["sample"]["output_text"]}]}
        store.record_item(db, claimed, i, entry, "pass" if ok else "fail", results, sample)
    criteria = [{"name": "right"}]
    assert store.finish_run(db, run["id"], "w", criteria)
    return run["id"]


async def test_eval_comparison_of_two_runs_with_the_items_that_changed(client, two_tenants):
    from ownllm.evals import store
    from ownllm.gateway.principal import Principal

    acme = Principal(tenant_id="acme", key_id=two_tenants.a.key_id)
    criteria = [{"type": "string_check", "name": "right", "input": "{{sample.output_text}}",
                 "reference": "True", "operation": "ilike"}]  # fmt: skip
    evaluation = store.create_eval(two_tenants.db, acme, name="holdout", testing_criteria=criteria,
                                   data_source_config={"type": "custom", "item_schema": {
                                       "type": "object"}})  # fmt: skip
    base = _completed_run(
        two_tenants.db, acme, evaluation["id"], "base", [True, False, False, False]
    )
    tuned = _completed_run(
        two_tenants.db, acme, evaluation["id"], "tuned", [True, True, True, False]
    )

    url = f"/v1/dashboard/evals/{evaluation['id']}/compare"
    r = await client.get(url, headers=two_tenants.a.headers)  # the runs chosen: older is the base
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["base_run"]["id"] == base and body["candidate_run"]["id"] == tuned
    right = body["comparison"]["criteria"][0]
    assert right["criterion"] == "right" and right["a"]["pass_rate"] == 0.25
    assert right["b"]["pass_rate"] == 0.75 and right["delta"] == 0.5
    lo, hi = right["delta_interval"]
    assert lo < 0.5 < hi
    changed = body["comparison"]["changed_items"]
    assert [(c["datasource_item_id"], c["a"]["status"], c["b"]["status"]) for c in changed] == [
        (1, "fail", "pass"),
        (2, "fail", "pass"),
    ]
    assert changed[0]["b"]["output"] == "tuned says True"

    swapped = await client.get(
        f"{url}?base={tuned}&candidate={base}", headers=two_tenants.a.headers
    )
    assert swapped.json()["comparison"]["criteria"][0]["delta"] == -0.5
    # another tenant's eval or run does not exist for this one
    other = await client.get(url, headers=two_tenants.b.headers)
    assert other.status_code == 404
    bad = await client.get(f"{url}?base=evalrun-nope", headers=two_tenants.a.headers)
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "run_id"
