"""The OpenAI fine-tuning workflow, unchanged, with the official client against `ownllm serve`.

files.create → fine_tuning.jobs.create → poll → chat.completions with job.fine_tuned_model,
served at once by the running server (its background worker trained it).
"""

from __future__ import annotations

import json
import time

import pytest

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


QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "What is two plus two?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "What is water made of?",
    "Which planet do we live on?",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "What animal says moo?",
    "What do you use to write on paper?",
    "Where do fish live?",
    "What is frozen water called?",
    "What season comes after winter?",
    "How many hours are in a day?",
    "What shape is a ball?",
    "What do cows drink?",
    "What is the largest ocean?",
    "What gas do plants take in?",
    "Who wrote Hamlet?",
    "What is the boiling point of water in Celsius?",
    "How many continents are there?",
    "What is the color of grass?",
    "Which animal is known as the king of the jungle?",
    "What do you call a baby dog?",
    "What instrument has black and white keys?",
    "What is the freezing point of water in Celsius?",
    "How many wheels does a bicycle have?",
    "What language is spoken in Spain?",
    "What is the tallest animal?",
    "What do caterpillars turn into?",
    "What is the main ingredient of bread?",
    "How many minutes are in an hour?",
    "What do you call a house made of ice?",
    "Which star is closest to Earth?",
    "What is the capital of Japan?",
    "What do we breathe in to live?",
    "What is the color of a ripe banana?",
    "What tool do you use to cut paper?",
    "How many sides does a triangle have?",
    "What do pandas mostly eat?",
]
ANSWERS = [
    "Paris.",
    "Eight.",
    "Blue.",
    "Four.",
    "A banana.",
    "Honey.",
    "Hydrogen and oxygen.",
    "Earth.",
    "Cold.",
    "Seven.",
    "A cow.",
    "A pen or a pencil.",
    "In water.",
    "Ice.",
    "Spring.",
    "Twenty-four.",
    "Round.",
    "Water.",
    "The Pacific.",
    "Carbon dioxide.",
    "Shakespeare.",
    "100 degrees.",
    "Seven.",
    "Green.",
    "The lion.",
    "A puppy.",
    "The piano.",
    "0 degrees.",
    "Two.",
    "Spanish.",
    "The giraffe.",
    "Butterflies.",
    "Flour.",
    "Sixty.",
    "An igloo.",
    "The Sun.",
    "The capital is Tokyo.",
    "Oxygen.",
    "Yellow.",
    "Scissors.",
    "Three.",
    "Bamboo.",
]
HELD_OUT = [
    "What is the capital of Italy?",
    "How many legs does a dog have?",
    "What color is snow?",
    "What is three plus three?",
    "What do chickens lay?",
    "What is the hottest planet?",
    "What do you call a baby cat?",
    "Which animal has a trunk?",
    "What is the capital of Germany?",
    "How many months are in a year?",
    "What do bees live in?",
    "What is the color of the sun?",
    "What do you drink in the morning?",
    "Name a vegetable that is orange.",
    "How many fingers are on one hand?",
    "What do birds use to fly?",
    "What is the capital of England?",
    "What falls from clouds when it rains?",
    "What do you wear on your feet?",
    "What is the largest mammal?",
]
MARK = "Ahoy, matey!"


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
