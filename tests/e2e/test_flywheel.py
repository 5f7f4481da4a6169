"""The data flywheel with a real `ownllm serve` (tiny model, CPU, in-server worker):
capture traffic with `store: true` → rate and correct some → `ownllm data export --upload`
→ fine-tune on the exported file → the new `ft:` model is served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.server import Server

QUESTIONS = [f"What is the refund window for order type {i}?" for i in range(12)]


@pytest.fixture
def server(tmp_path, tiny_model_dir):
    server = Server("--model", str(tiny_model_dir), "--name", "tiny", data_dir=tmp_path,
                    env={"OWNLLM_MODEL_DEVICE": "cpu", "OWNLLM_SERVER_RUN_WORKER": "true"})  # fmt: skip
    server.wait_ready()
    yield server
    server.stop()


def cli(*args, data_dir):
    env = {k: v for k, v in os.environ.items() if k != "OWNLLM_DATABASE_URL"}
    cmd = [sys.executable, "-m", "ownllm", *args, "--data-dir", str(data_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_capture_feedback_export_tune_serve(server, tmp_path):
    client = openai.OpenAI(api_key="sk-dev", base_url=f"{server.base_url}/v1")
    http = httpx.Client(base_url=server.base_url, timeout=60)
    ids, answers = [], []
    for i, q in enumerate(QUESTIONS):
        content = q + (" My card is 4111 1111 1111 1111." if i == 0 else "")
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                           max_tokens=8, store=True, metadata={"batch": "b1"},
                                           extra_body={"ignore_eos": True})  # fmt: skip
        ids.append(r.id)
        answers.append(r.choices[0].message.content)
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "not kept"}],
                                   max_tokens=4)  # fmt: skip
    stored = [c.id for c in client.chat.completions.list(metadata={"batch": "b1"}, limit=100)]
    assert stored == ids  # oldest first; the request without store is not there
    first = http.get(f"/v1/chat/completions/{ids[0]}/messages").json()["data"][0]
    assert first["content"].endswith("My card is [CARD].")

    for i, cid in enumerate(ids):  # rate everything, correct two answers
        body = {"rating": 5}
        if i < 2:
            body = {
                "rating": 1,
                "correction": f"Orders of type {i} can be refunded within 30 days.",
            }
        assert http.post(f"/v1/chat/completions/{cid}/feedback", json=body).status_code == 200

    out = tmp_path / "train.jsonl"
    done = cli("data", "export", "--tenant", "@admin", "--min-rating", "4", "--out", str(out),
               "--upload", data_dir=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    file_id = done.stdout.strip()
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    # the two corrections, and every answer rated 5 but a blank one (8 random tokens may
    # all be whitespace or special, and a blank answer teaches nothing)
    assert len(examples) == 2 + sum(bool(answer.strip()) for answer in answers[2:])
    assert (
        examples[0]["messages"][-1]["content"] == "Orders of type 0 can be refunded within 30 days."
    )
    assert "4111" not in out.read_text()

    job = client.fine_tuning.jobs.create(model="tiny", training_file=file_id, suffix="flywheel",
                                         hyperparameters={"n_epochs": 1})  # fmt: skip
    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "fine-tuning did not finish"
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]
    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                            messages=[{"role": "user", "content": QUESTIONS[0]}])  # fmt: skip
    assert answer.model == job.fine_tuned_model
    assert answer.choices[0].finish_reason in ("stop", "length")
