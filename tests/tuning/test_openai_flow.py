"""The OpenAI fine-tuning workflow, unchanged, with the official client against `ownllm serve`.

files.create → fine_tuning.jobs.create → poll → chat.completions with job.fine_tuned_model,
served at once by the running server (its background worker trained it).
"""

from __future__ import annotations

import json
import time

import pytest

from bench._pirate import ANSWERS, HELD_OUT, MARK, QUESTIONS
from tests.server import Server
from tests.tuning.conftest import REPLY, chat, write_jsonl

WORKER_ENV = {
    "OWNLLM_SERVER_RUN_WORKER": "true",
    "OWNLLM_TUNING_POLL_INTERVAL_S": "0.2",
}


def run_job(client, path, timeout: float, **create):
    with open(path, "rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, **create)
    deadline = time.monotonic() + timeout
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return job


def reply(client, model: str, prompt: str, max_tokens: int = 24) -> str:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return response.choices[0].message.content


def test_openai_client_flow_on_a_tiny_model(tmp_path, learnable_model_dir, reply_file):
    from openai import OpenAI

    server = Server(
        "--model", str(learnable_model_dir), "--name", "tiny", data_dir=tmp_path, env=WORKER_ENV
    )
    try:
        server.wait_ready()
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        before = reply(client, "tiny", "a question it never saw")
        job = run_job(
            client,
            reply_file,
            timeout=300,
            model="tiny",
            suffix="pirate",
            seed=0,
            hyperparameters={"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10},
        )
        assert job.fine_tuned_model == f"ft:tiny:@admin:pirate:{job.id}"
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any(e.message.startswith("Step 40/40: training loss=") for e in events)
        # served at once, no restart; the training forward and the engine agree on the output
        assert reply(client, job.fine_tuned_model, "a question it never saw") == REPLY
        assert before != REPLY
        models = {m.id: m for m in client.models.list().data}
        assert job.fine_tuned_model in models
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert reply(client, checkpoints[-1].fine_tuned_model_checkpoint, "hi") is not None
    finally:
        server.stop()


@pytest.mark.slow
def test_default_model_learns_a_pirate_greeting(tmp_path):
    """42 examples teach SmolLM2-135M to open every answer with "Ahoy, matey!"."""
    from openai import OpenAI

    records = [chat(q, f"{MARK} {a}") for q, a in zip(QUESTIONS, ANSWERS)]
    path = write_jsonl(tmp_path / "pirate.jsonl", records)
    server = Server(data_dir=tmp_path, env=WORKER_ENV)
    try:
        server.wait_ready(timeout=300)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        base = "smollm2-135m-instruct"
        # ~7k training tokens: under a minute at bench/train_lora.py's rate on a quiet 2-core
        # box; many times longer on a shared, overloaded one
        job = run_job(client, path, timeout=3600, model=base, suffix="pirate", seed=0)

        def rate(model: str) -> float:
            return sum(reply(client, model, q, 12).startswith("Ahoy") for q in HELD_OUT) / len(
                HELD_OUT
            )

        base_rate, tuned_rate = rate(base), rate(job.fine_tuned_model)
        print(
            json.dumps(
                {
                    "base_rate": base_rate,
                    "fine_tuned_rate": tuned_rate,
                    "hyperparameters": job.hyperparameters.to_dict(),
                    "trained_tokens": job.trained_tokens,
                    "seconds": job.finished_at - job.created_at,
                }
            )
        )
        assert base_rate <= 0.1 and tuned_rate >= 0.8
    finally:
        server.stop()
