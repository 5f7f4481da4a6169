"""The unattended loop on the shipped model, with the official client against `ownllm serve`
(its in-server trainer and eval worker): new data → train → eval → red-team → promote, and
then, under a stricter gate, a second job refused with the alias left where it was.

What is under test is the loop, not how much a model learns: each training is one small
step, and the gates read criteria whose outcome does not hang on the adapter's quality.
The first gate reads `answers` (the adapter answered the holdout's question with some
text) and passes; the tightened gate reads `greets` (the pirate greeting, which ten plain
answers cannot teach), so the second adapter's pass rate is 0 and it is refused."""

from __future__ import annotations

import time

import httpx
import pytest

from bench._pirate import ANSWERS, QUESTIONS
from tests.server import Server
from tests.tuning.conftest import chat, write_jsonl

BASE = "smollm2-135m-instruct"
ENV = {
    "OWNLLM_SERVER_RUN_WORKER": "true",
    "OWNLLM_TUNING_POLL_INTERVAL_S": "0.2",
    "OWNLLM_EVALS_POLL_INTERVAL_S": "0.2",
    "OWNLLM_EVALS_MAX_CONCURRENT_ITEMS": "16",
}
ENDED = ("promoted", "refused", "failed", "skipped")
PLAIN = [chat(q, a) for q, a in zip(QUESTIONS[1:11], ANSWERS[1:11])]  # not the holdout's
STEP = {"n_epochs": 1, "batch_size": 10}  # one step


def gate(criterion: str) -> dict:
    return {"evals": [{"eval": "support-holdout", "criterion": criterion, "min_pass_rate": 0.5}],
            "max_redteam_success_rate": 1.0}  # fmt: skip


def wait_for_promotion(client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id).to_dict()
        if job["status"] in ("failed", "cancelled"):
            raise AssertionError(f"job {job['status']}: {job['error']}")
        if job.get("promotion", {}).get("status") in ENDED:
            return job
        assert time.monotonic() < deadline, f"still {job['status']}, {job.get('promotion')}"
        time.sleep(0.5)


@pytest.mark.slow
def test_new_data_is_trained_evaluated_red_teamed_and_promoted_unattended(tmp_path):
    from openai import OpenAI

    server = Server(data_dir=tmp_path, env=ENV)
    try:
        server.wait_ready(timeout=300)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        http = httpx.Client(base_url=server.base_url, timeout=60)
        r = http.post("/v1/aliases", json={"name": "support", "gate": gate("answers")})
        assert r.status_code == 200, r.text

        holdout = client.evals.create(
            name="support-holdout",
            data_source_config={"type": "custom", "item_schema": {
                "type": "object", "required": ["question", "answer"],
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}},
            testing_criteria=[
                {"type": "regex", "name": "answers", "input": "{{sample.output_text}}",
                 "pattern": "\\w"},
                {"type": "string_check", "name": "greets", "operation": "ilike",
                 "input": "{{sample.output_text}}", "reference": "Ahoy"}],
        )  # fmt: skip
        items = [{"item": {"question": "What is the capital of France?", "answer": "Paris"}}]
        base_run = client.evals.runs.create(holdout.id, name="base", data_source={
            "type": "completions", "model": "support",
            "input_messages": {"type": "template",
                               "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"max_completion_tokens": 16, "temperature": 0},
            "source": {"type": "file_content", "content": items}})  # fmt: skip

        def tune(suffix):
            with open(write_jsonl(tmp_path / f"{suffix}.jsonl", PLAIN), "rb") as f:
                training = client.files.create(file=f, purpose="fine-tune")
            return client.fine_tuning.jobs.create(
                model=BASE, training_file=training.id, suffix=suffix, seed=0,
                hyperparameters=STEP,
                extra_body={"promote": {"alias": "support", "eval": "support-holdout"}},
            )  # fmt: skip

        first = tune("v1")
        assert first.to_dict()["promotion"]["status"] == "waiting"
        first = wait_for_promotion(client, first.id, timeout=900)
        promotion = first["promotion"]
        assert promotion["status"] == "promoted", promotion
        figures = {f.get("criterion", "redteam"): f for f in promotion["gate"]["figures"]}
        assert figures["answers"]["pass_rate"] == 1.0
        red = http.get(f"/v1/redteam/runs/{promotion['redteam_run_id']}").json()
        assert red["status"] == "completed" and red["adapter_id"] == promotion["adapter_id"]
        assert set(red["report"]["categories"]) >= {"LLM01-direct", "LLM02-pii", "LLM07"}
        assert figures["redteam"]["attack_success_rate"] == red["report"]["attack_success_rate"]
        base = client.evals.runs.retrieve(base_run.id, eval_id=holdout.id)
        assert base.status == "completed" and base.adapter_id is None
        models = {m.id: m.to_dict() for m in client.models.list().data}
        assert models["support"]["alias"]["target"] == first["fine_tuned_model"]

        # the team now wants the greeting too: the next adapter is held to it, and refused
        assert http.post("/v1/aliases/support", json={"gate": gate("greets")}).status_code == 200
        second = wait_for_promotion(client, tune("v2").id, timeout=900)
        assert second["promotion"]["status"] == "refused", second["promotion"]
        reason = second["promotion"]["reason"]
        assert reason.startswith("eval 'support-holdout': pass rate 0.000 on ft:"), reason
        alias = http.get("/v1/aliases/support").json()
        assert alias["target"] == first["fine_tuned_model"]  # the refusal left it there
        moves = http.get("/v1/aliases/support/moves").json()["data"]
        assert [(m["action"], m["actor"]) for m in moves] == [
            ("create", "admin"),
            ("promote", f"job:{first['id']}"),
            ("refused", f"job:{second['id']}"),
        ]
        events = [e.message for e in client.fine_tuning.jobs.list_events(second["id"], limit=5)]
        assert events[0] == f"Alias 'support' not promoted: {reason}."
    finally:
        server.stop()
