"""The unattended loop in process: a fine-tuning job that names an alias and an eval is
trained (a real tiny adapter), evaluated and red-teamed on a scripted model (answers picked
by whether an adapter runs), and promoted when the alias's gate passes; a second job whose
adapter got worse is refused, and the refusal is on the job and in the alias history.
`promote` is checked when the job is made: 400s naming the field."""

from __future__ import annotations

import json

import httpx
import pytest

from ownllm.adapters.registry import own_adapter
from ownllm.api.eval_runner import EvalWorker
from ownllm.tuning.worker import BaseModel, Worker
from tests.evals.scripted import answering
from tests.tuning.conftest import REPLY, chat

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
HOLDOUT = [{"item": {"question": f"Refund window for plan {p}?", "answer": f"{d} days"}}
           for p, d in (("basic", 14), ("plus", 30), ("pro", 60), ("team", 90))]  # fmt: skip
CRITERIA = [{"type": "string_check", "name": "right", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "ilike"}]  # fmt: skip
GATE = {"evals": [{"eval": "support-holdout", "min_pass_rate": 0.75}],
        "max_redteam_success_rate": 0.2}  # fmt: skip
DAYS = {"basic": "14 days", "plus": "30 days", "pro": "60 days", "team": "90 days"}


class Model:
    """The base knows no refund window; an adapter knows them all, unless `worse` names it.
    Everything else (the red-team probes) is refused."""

    def __init__(self) -> None:
        self.worse: set[str] = set()

    def __call__(self, prompt: str, adapters: tuple[str, ...]) -> str:
        for plan, days in DAYS.items():
            if f"plan {plan}" in prompt:
                if adapters and not set(adapters) & self.worse:
                    return f"It is {days}."
                return "I do not know."
        return "I'm sorry, I can't help with that."


@pytest.fixture
async def loop(gateway, two_tenants, learnable_model_dir):
    app, state = gateway
    model = Model()
    answering(state.backend, model)
    base = BaseModel(state.model_id, learnable_model_dir, "sha-tiny")
    trainer = Worker(state.db, state.data_dir, base, state.config.tuning, worker_id="trainer")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        client.headers.update(two_tenants.a.headers)
        yield client, state, model, trainer, EvalWorker(state, app.state.gateway, "evaluator")


async def upload(client, records) -> str:
    content = "\n".join(json.dumps(r) for r in records).encode()
    r = await client.post("/v1/files", files={"file": ("train.jsonl", content)},
                          data={"purpose": "fine-tune"})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["id"]


async def setup_alias_and_eval(client, state, worker) -> None:
    r = await client.post("/v1/aliases", json={"name": "support", "gate": GATE})
    assert r.status_code == 200, r.text
    body = {"name": "support-holdout", "testing_criteria": CRITERIA,
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA}}  # fmt: skip
    assert (await client.post("/v1/evals", json=body)).status_code == 200
    run = {"name": "base", "data_source": {
        "type": "completions", "model": state.model_id,
        "input_messages": {"type": "template",
                           "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"max_completion_tokens": 64, "temperature": 0},
        "source": {"type": "file_content", "content": HOLDOUT}}}  # fmt: skip
    r = await client.post("/v1/evals/support-holdout/runs", json=run)
    assert r.status_code == 200, r.text
    await worker.drain()  # the base's run: the data source the loop repeats


async def train(client, state, trainer, suffix: str) -> dict:
    train_file = await upload(client, [chat(f"question {i}", REPLY) for i in range(12)])
    body = {"model": state.model_id, "training_file": train_file, "suffix": suffix,
            "hyperparameters": {"n_epochs": 1, "batch_size": 4},
            "promote": {"alias": "support", "eval": "support-holdout"}}  # fmt: skip
    r = await client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["promotion"]["status"] == "waiting" and job["promotion"]["alias"] == "support"
    assert trainer.run_once()
    return job


async def events(client, job_id: str) -> list[str]:
    r = await client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100")
    return [e["message"] for e in reversed(r.json()["data"])]


async def test_a_trained_adapter_is_evaluated_red_teamed_and_promoted(loop, two_tenants):
    client, state, model, trainer, worker = loop
    await setup_alias_and_eval(client, state, worker)
    job = await train(client, state, trainer, "v1")
    await worker.drain()

    job = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
    assert job["status"] == "succeeded"
    promotion = job["promotion"]
    assert promotion["status"] == "promoted", promotion
    alias = (await client.get("/v1/aliases/support")).json()
    assert alias["target"] == job["fine_tuned_model"] and alias["version"] == 2
    assert alias["adapter_id"] == promotion["adapter_id"]
    figures = {f.get("eval", "redteam"): f for f in promotion["gate"]["figures"]}
    assert figures["support-holdout"]["pass_rate"] == 1.0
    assert figures["support-holdout"]["run_id"] == promotion["eval_run_id"]
    assert figures["redteam"]["attack_success_rate"] == 0.0
    assert figures["redteam"]["run_id"] == promotion["redteam_run_id"]

    run = (await client.get(f"/v1/redteam/runs/{promotion['redteam_run_id']}")).json()
    assert run["status"] == "completed" and run["adapter_id"] == promotion["adapter_id"]
    said = await events(client, job["id"])
    assert any(m.startswith(f"Evaluating {job['fine_tuned_model']} for alias 'support'")
               for m in said)  # fmt: skip
    assert said[-1] == f"Alias 'support' promoted to {job['fine_tuned_model']} (version 2)."
    moves = (await client.get("/v1/aliases/support/moves")).json()["data"]
    assert [(m["action"], m["actor"]) for m in moves] == [
        ("create", two_tenants.a.key_id),
        ("promote", f"job:{job['id']}"),
    ]
    # clients calling the alias now run the new adapter
    r = await client.post("/v1/chat/completions", json={
        "model": "support", "messages": [{"role": "user", "content": "Refund window for plan pro?"}],
        "max_tokens": 64})  # fmt: skip
    assert r.json()["choices"][0]["message"]["content"] == "It is 60 days."


async def test_a_worse_adapter_is_refused_and_the_alias_stays(loop, two_tenants):
    client, state, model, trainer, worker = loop
    await setup_alias_and_eval(client, state, worker)
    first = await train(client, state, trainer, "v1")
    await worker.drain()
    v1 = (await client.get("/v1/aliases/support")).json()["adapter_id"]
    assert v1 is not None

    second = await train(client, state, trainer, "v2")
    second = (await client.get(f"/v1/fine_tuning/jobs/{second['id']}")).json()
    v2_name = second["fine_tuned_model"]
    model.worse.add(own_adapter(state.db, "acme", v2_name).id)
    await worker.drain()

    second = (await client.get(f"/v1/fine_tuning/jobs/{second['id']}")).json()
    promotion = second["promotion"]
    assert promotion["status"] == "refused"
    assert "eval 'support-holdout': pass rate 0.000" in promotion["reason"]
    assert promotion["gate"]["passed"] is False
    alias = (await client.get("/v1/aliases/support")).json()
    assert alias["adapter_id"] == v1 and alias["version"] == 2  # unmoved
    said = await events(client, second["id"])
    assert said[-1] == f"Alias 'support' not promoted: {promotion['reason']}."
    moves = (await client.get("/v1/aliases/support/moves")).json()["data"]
    assert [(m["action"], m["actor"]) for m in moves] == [
        ("create", two_tenants.a.key_id),
        ("promote", f"job:{first['id']}"),
        ("refused", f"job:{second['id']}"),
    ]
    assert moves[-1]["reason"] == promotion["reason"]


async def test_promote_is_checked_when_the_job_is_made(loop, two_tenants):
    client, state, model, trainer, worker = loop
    train_file = await upload(client, [chat(f"question {i}", REPLY) for i in range(12)])
    body = {"model": state.model_id, "training_file": train_file}

    async def refused(promote) -> dict:
        r = await client.post("/v1/fine_tuning/jobs", json={**body, "promote": promote})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    assert (await refused({"alias": "support", "eval": "x"}))["param"] == "promote.alias"
    await client.post("/v1/aliases", json={"name": "support", "gate": GATE})
    error = await refused({"alias": "support", "eval": "support-holdout"})
    assert error["param"] == "promote.eval" and "no eval 'support-holdout'" in error["message"]
    spec = {"name": "support-holdout", "testing_criteria": CRITERIA,
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA}}  # fmt: skip
    await client.post("/v1/evals", json=spec)
    error = await refused({"alias": "support", "eval": "support-holdout"})
    assert error["param"] == "promote.eval" and "has no run on a model" in error["message"]
    assert (await refused({"alias": "support"}))["param"] == "promote.eval"
    assert (await refused({"alias": "support", "eval": "e", "x": 1}))["param"] == "promote.x"
    assert (await refused("support"))["param"] == "promote"
    bad_source = {
        "type": "completions",
        "source": {"type": "file_content", "content": [{}]},
        "input_messages": {"type": "item_reference", "item_reference": "item.m"},
    }
    error = await refused(
        {"alias": "support", "eval": "support-holdout", "data_source": bad_source}
    )
    assert error["param"] == "promote.data_source.source.content[0]"
    # another tenant's alias does not exist for this one
    globex = two_tenants.b.headers
    await client.post("/v1/aliases", json={"name": "theirs"}, headers=globex)
    assert (await refused({"alias": "theirs", "eval": "support-holdout"}))["param"] == (
        "promote.alias"
    )

    # given its data source, the loop needs no earlier run; a job that fails skips it
    source = {
        "type": "completions",
        "source": {"type": "file_content", "content": HOLDOUT},
        "input_messages": {
            "type": "template",
            "template": [{"role": "user", "content": "{{item.question}}"}],
        },
    }
    bad_file = await upload(client, [{"messages": [{"role": "user", "content": "no answer"}]}])
    r = await client.post("/v1/fine_tuning/jobs", json={**body, "training_file": bad_file,
        "promote": {"alias": "support", "eval": "support-holdout", "data_source": source}})  # fmt: skip
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "failed" and job["promotion"]["status"] == "waiting"
    await worker.drain()
    job = (await client.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
    assert job["promotion"]["status"] == "skipped"
    assert (await events(client, job["id"]))[-1] == (
        "Alias 'support' not promoted: the fine-tuning job failed; nothing was evaluated."
    )
