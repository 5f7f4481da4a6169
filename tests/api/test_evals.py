"""/v1/evals end to end on a scripted model: evals and runs in OpenAI's shapes, each
grader's verdict, runs through the inference path (ledger rows name the run), an alias
pinned per run, resume after a lost worker, 400s naming the field, 404s across tenants."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select, update

from ownllm.api.eval_runner import EvalWorker
from ownllm.evals import store
from ownllm.store.schema import EvalRun, UsageRecord
from tests.adapters.test_aliases import add_adapter
from tests.evals.scripted import answering

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
ITEMS = [
    {"item": {"question": "capital of France?", "answer": "Paris"}},
    {"item": {"question": "capital of Italy?", "answer": "Rome"}},
    {"item": {"question": "capital of Spain?", "answer": "Madrid"}},
]
CRITERIA = [
    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
     "reference": "{{item.answer}}", "operation": "eq"},
    {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
     "reference": "{{item.answer}}", "operation": "ilike"},
    {"type": "regex", "name": "one-word", "input": "{{sample.output_text}}", "pattern": "^\\w+$"},
    {"type": "label_model", "name": "judge", "model": "base",
     "input": [{"role": "user", "content": "Grade: {{item.answer}} vs {{sample.output_text}}"}],
     "labels": ["correct", "incorrect"], "passing_labels": ["correct"]},
]  # fmt: skip
CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid"}


def scripted_answers(prompt: str, adapters: tuple[str, ...]) -> str:
    """The base knows only France; any adapter knows all three (in lower case, so `exact`
    fails where `mentions` passes). The judge says correct when the words match."""
    if "Grade:" in prompt:
        said = prompt.split("Grade:")[1]
        answer, _, sample = said.partition(" vs ")
        is_same = answer.strip().lower() in sample.lower()
        return '{"label": "correct"}' if is_same else '{"label": "incorrect"}'
    for country, capital in CAPITALS.items():
        if country in prompt:
            if adapters:
                return capital.lower()
            return capital if country == "France" else "I do not know"
    return "?"


@pytest.fixture
async def api(gateway):
    app, state = gateway
    answering(state.backend, scripted_answers)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, state, EvalWorker(state, app.state.gateway, worker_id="test-worker")


def run_body(model: str, items=ITEMS) -> dict:
    return {
        "name": f"on {model}",
        "data_source": {
            "type": "completions",
            "model": model,
            "input_messages": {"type": "template",
                               "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"max_completion_tokens": 16, "temperature": 0},
            "source": {"type": "file_content", "content": items},
        },
    }  # fmt: skip


async def make_eval(client, headers, base: str) -> dict:
    criteria = [{**c, "model": base} if "model" in c else c for c in CRITERIA]
    body = {"name": "capitals", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA,
            "include_sample_schema": True}, "testing_criteria": criteria}  # fmt: skip
    r = await client.post("/v1/evals", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_runs_grade_every_item_through_the_inference_path(api, two_tenants):
    client, state, worker = api
    acme = two_tenants.a.headers
    evaluation = await make_eval(client, acme, state.model_id)
    assert evaluation["object"] == "eval" and evaluation["id"].startswith("eval")
    assert evaluation["data_source_config"]["schema"]["properties"]["item"] == ITEM_SCHEMA
    v1 = add_adapter(two_tenants.db, "acme", "geo", base_model=state.model_id)
    await client.post("/v1/aliases", json={"name": "support", "target": "geo"}, headers=acme)

    base = (await client.post(f"/v1/evals/{evaluation['id']}/runs", json=run_body(state.model_id),
                              headers=acme)).json()  # fmt: skip
    tuned = (await client.post("/v1/evals/capitals/runs", json=run_body("support"),
                               headers=acme)).json()  # fmt: skip
    assert base["status"] == "queued" and base["adapter_id"] is None
    assert tuned["adapter_id"] == v1  # the alias's version, pinned when the run was made
    await worker.drain()

    base = (await client.get(f"/v1/evals/capitals/runs/{base['id']}", headers=acme)).json()
    assert base["status"] == "completed"
    assert base["result_counts"] == {"total": 3, "errored": 0, "failed": 2, "passed": 1}
    by_name = {r["testing_criteria"]: r for r in base["per_testing_criteria_results"]}
    assert by_name["exact"] == {"testing_criteria": "exact", "passed": 1, "failed": 2}
    assert by_name["one-word"]["passed"] == 1 and by_name["judge"]["passed"] == 1

    tuned = (await client.get(f"/v1/evals/capitals/runs/{tuned['id']}", headers=acme)).json()
    by_name = {r["testing_criteria"]: r for r in tuned["per_testing_criteria_results"]}
    assert by_name["exact"]["passed"] == 0 and by_name["mentions"]["passed"] == 3
    assert by_name["judge"]["passed"] == 3 and tuned["result_counts"]["passed"] == 0
    assert tuned["per_model_usage"][0]["invocation_count"] == 3

    items = (await client.get(f"/v1/evals/capitals/runs/{base['id']}/output_items?status=pass",
                              headers=acme)).json()  # fmt: skip
    assert [i["datasource_item"]["answer"] for i in items["data"]] == ["Paris"]
    item = items["data"][0]
    assert item["object"] == "eval.run.output_item" and item["sample"]["output"] == [
        {"role": "assistant", "content": "Paris"}
    ]
    judge = next(r for r in item["results"] if r["name"] == "judge")
    assert judge["passed"] is True and judge["sample"]["label"] == "correct"
    one = await client.get(f"/v1/evals/capitals/runs/{base['id']}/output_items/{item['id']}",
                           headers=acme)  # fmt: skip
    assert one.json()["id"] == item["id"]

    # the samples went through the gateway: ledger rows for the tenant, naming the run
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with two_tenants.db.session() as s:
            rows = list(s.scalars(select(UsageRecord).where(UsageRecord.batch_id == tuned["id"])))
        if len(rows) >= 6:
            break
        time.sleep(0.05)
    assert {r.tenant_id for r in rows} == {"acme"} and len(rows) == 6  # 3 samples, 3 judgements
    assert {r.adapter_id for r in rows if r.model == v1} == {v1}
    # the backend saw the pinned adapter for the tuned run's samples
    assert any(tuple(a.adapter_id for a in r.adapters) == (v1,) for r in state.backend.requests)

    listed = (await client.get("/v1/evals/capitals/runs?order=desc&limit=1", headers=acme)).json()
    assert listed["data"][0]["id"] == tuned["id"] and listed["has_more"] is True


async def test_a_run_resumes_where_a_lost_worker_left_it(api, two_tenants):
    client, state, worker = api
    acme = two_tenants.a.headers
    await make_eval(client, acme, state.model_id)
    run = (
        await client.post("/v1/evals/capitals/runs", json=run_body(state.model_id), headers=acme)
    ).json()
    lost = EvalWorker(state, worker.gateway, worker_id="lost")
    claimed = await lost.step()
    assert claimed
    lost_task = lost.running[run["id"]]
    lost_task.cancel()  # the worker dies mid-run, after the claim, maybe after some items
    await asyncio.gather(lost_task, return_exceptions=True)
    with two_tenants.db.session() as s:
        s.execute(update(EvalRun).where(EvalRun.id == run["id"]).values(heartbeat_at=0.0))
        row = s.get(EvalRun, run["id"])
    # what the lost worker had graded before it died: item 0
    marker = [
        {"name": "exact", "type": "string_check", "score": 1.0, "passed": True, "sample": None}
    ]
    store.record_item(two_tenants.db, row, 0, ITEMS[0], "pass", marker, {"by": "lost"})
    already = len(state.backend.requests)
    await worker.drain()
    run = (await client.get(f"/v1/evals/capitals/runs/{run['id']}", headers=acme)).json()
    assert run["status"] == "completed" and run["result_counts"]["total"] == 3
    items = (await client.get(f"/v1/evals/capitals/runs/{run['id']}/output_items",
                              headers=acme)).json()["data"]  # fmt: skip
    assert sorted(i["datasource_item_id"] for i in items) == [0, 1, 2]  # each item once
    with two_tenants.db.session() as s:
        assert s.get(EvalRun, run["id"]).attempts == 2
    assert len(state.backend.requests) - already == 4  # items 1 and 2: a sample and a judge each
    assert next(i for i in items if i["datasource_item_id"] == 0)["sample"] == {"by": "lost"}


async def test_bad_evals_and_runs_are_400s_naming_the_field(api, two_tenants):
    client, state, _ = api
    acme = two_tenants.a.headers
    config = {"type": "custom", "item_schema": ITEM_SCHEMA}
    cases = [
        ({"data_source_config": config, "testing_criteria": [{"type": "python"}]},
         "testing_criteria[0].type"),
        ({"data_source_config": config, "testing_criteria": [{**CRITERIA[0], "operation": "gt"}]},
         "testing_criteria[0].operation"),
        ({"data_source_config": config, "testing_criteria": [{"type": "regex", "input": "x",
          "pattern": "("}]}, "testing_criteria[0].pattern"),
        ({"data_source_config": {"type": "logs"}, "testing_criteria": CRITERIA},
         "data_source_config.type"),
    ]  # fmt: skip
    for body, param in cases:
        r = await client.post("/v1/evals", json=body, headers=acme)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    await make_eval(client, acme, state.model_id)
    bad_item = run_body(state.model_id, [{"item": {"question": "q"}}])
    r = await client.post("/v1/evals/capitals/runs", json=bad_item, headers=acme)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "data_source.source.content[0].item"
    assert "'answer' is a required property" in r.json()["error"]["message"]
    r = await client.post("/v1/evals/capitals/runs", json=run_body("nope"), headers=acme)
    assert r.status_code == 404 and r.json()["error"]["param"] == "data_source.model"


async def test_another_tenants_evals_and_runs_are_404s(api, two_tenants):
    client, state, worker = api
    acme, globex = two_tenants.a.headers, two_tenants.b.headers
    evaluation = await make_eval(client, acme, state.model_id)
    run = (
        await client.post("/v1/evals/capitals/runs", json=run_body(state.model_id), headers=acme)
    ).json()
    await worker.drain()
    item = (await client.get(f"/v1/evals/capitals/runs/{run['id']}/output_items",
                             headers=acme)).json()["data"][0]  # fmt: skip
    base = f"/v1/evals/{evaluation['id']}"
    for method, path in [
        ("GET", base), ("POST", base), ("DELETE", base), ("GET", f"{base}/runs"),
        ("POST", f"{base}/runs"), ("GET", f"{base}/runs/{run['id']}"),
        ("POST", f"{base}/runs/{run['id']}"), ("DELETE", f"{base}/runs/{run['id']}"),
        ("GET", f"{base}/runs/{run['id']}/output_items"),
        ("GET", f"{base}/runs/{run['id']}/output_items/{item['id']}"),
        ("GET", "/v1/evals/capitals"),
    ]:  # fmt: skip
        body = run_body(state.model_id) if path.endswith("/runs") and method == "POST" else {}
        r = await client.request(method, path, json=body, headers=globex)
        assert r.status_code == 404, (method, path, r.text)
    assert (await client.get("/v1/evals", headers=globex)).json()["data"] == []
    r = await client.delete(f"/v1/evals/{evaluation['id']}", headers=acme)
    assert r.json() == {"object": "eval.deleted", "deleted": True, "eval_id": evaluation["id"]}
    assert (await client.get(f"{base}/runs/{run['id']}", headers=acme)).status_code == 404


async def test_the_openai_client_drives_evals_unchanged(api, two_tenants):
    from openai import AsyncOpenAI

    client, state, worker = api
    openai = AsyncOpenAI(base_url="http://test/v1", api_key=two_tenants.a.key, http_client=client)
    created = await openai.evals.create(
        name="capitals",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=[CRITERIA[0]],
    )
    assert created.id.startswith("eval") and created.testing_criteria[0].type == "string_check"
    run = await openai.evals.runs.create(created.id, **run_body(state.model_id))
    assert run.status == "queued"
    await worker.drain()
    run = await openai.evals.runs.retrieve(run.id, eval_id=created.id)
    assert run.status == "completed" and run.result_counts.passed == 1
    items = await openai.evals.runs.output_items.list(run.id, eval_id=created.id)
    assert sorted(i.datasource_item_id for i in items.data) == [0, 1, 2]
    assert [e.id async for e in openai.evals.list()] == [created.id]
