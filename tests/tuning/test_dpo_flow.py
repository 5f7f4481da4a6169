"""Preference tuning with the official client: `method={"type": "dpo", ...}` against
`ownllm serve`, and the model it makes served at once.

The slow proof on the shipped model: pairs that prefer answers opening with a pirate
greeting over the same answers without it; on held-out prompts the adapter's
log-probability margin for the greeting rises against the base, and its greedy answers
open with it where the base's do not.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench._pirate import ANSWERS, HELD_OUT, MARK, QUESTIONS
from tests.server import Server
from tests.tuning.conftest import PAIRS, pair, write_jsonl
from tests.tuning.test_openai_flow import WORKER_ENV, reply, run_job


def test_a_dpo_job_with_the_openai_client_is_served(tmp_path, learnable_model_dir):
    from openai import OpenAI

    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    server = Server(
        "--model", str(learnable_model_dir), "--name", "tiny", data_dir=tmp_path, env=WORKER_ENV
    )
    try:
        server.wait_ready()
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        job = run_job(
            client,
            path,
            timeout=300,
            model="tiny",
            suffix="prefs",
            seed=0,
            method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "beta": 0.1}}},
        )
        assert job.method.type == "dpo"
        assert job.method.dpo.hyperparameters.beta == 0.1
        assert job.fine_tuned_model == f"ft:tiny:@admin:prefs:{job.id}"
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        last = next(e for e in events if e.type == "metrics")  # newest first
        assert last.data["train_reward_accuracy"] == 1.0, last.data
        assert last.data["train_reward_margin"] > 0
        assert job.fine_tuned_model in {m.id for m in client.models.list().data}
        assert isinstance(reply(client, job.fine_tuned_model, "a question it never saw"), str)
    finally:
        server.stop()


# more questions with short answers, so the pairs number 50 with QUESTIONS
MORE = [
    ("What do you call a baby cow?", "A calf."),
    ("How many legs does an insect have?", "Six."),
    ("What colour are most leaves?", "Green."),
    ("What is five minus two?", "Three."),
    ("What do you sleep on?", "A bed."),
    ("What does a clock show?", "The time."),
    ("What do you use to open a door?", "A key."),
    ("What is the capital of Spain?", "Madrid."),
]
HELD_OUT_ANSWERS = ["Rome.", "Four.", "White.", "Six.", "Eggs.", "Venus.", "A kitten.",
                    "The elephant.", "Berlin.", "Twelve.", "In a hive.", "Yellow.", "Tea.",
                    "A carrot.", "Five.", "Wings.", "London.", "Rain.", "Shoes.",
                    "The blue whale."]  # fmt: skip


def _margins(model_dir, adapter_dir, prompts, answers) -> tuple[float, float]:
    """Mean log p(greeting + answer) - log p(answer) on `prompts`: (base, adapter)."""
    from ownllm.formats.peft import read_adapter, state_dict
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.tuning.hyperparams import LoraSettings
    from ownllm.tuning.model import TrainableModel
    from ownllm.tuning.objectives import sequence_logps
    from ownllm.tuning.preferences import PreferencePair, tokenize_pairs

    adapter = read_adapter(adapter_dir)
    model = TrainableModel.from_dir(model_dir, LoraSettings.from_peft_config(adapter.config))
    model.load_lora_state(state_dict(adapter.modules))
    model.eval()
    items = [
        PreferencePair(i, [{"role": "user", "content": q}], None, f"{MARK} {a}", a)
        for i, (q, a) in enumerate(zip(prompts, answers))
    ]
    data = tokenize_pairs(Tokenizer.from_dir(model_dir), items, max_len=256)
    with torch.no_grad():
        tuned = sequence_logps(model, data.pairs)
        with model.adapters_disabled():
            base = sequence_logps(model, data.pairs)
    margin = lambda t: float((t[:, 0] - t[:, 1]).mean())  # noqa: E731
    return margin(base), margin(tuned)


@pytest.mark.slow
def test_dpo_teaches_the_shipped_model_a_preferred_style(tmp_path):
    from openai import OpenAI
    from sqlalchemy import select

    from ownllm.models import prepare_model, resolve_model
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database
    from ownllm.store.schema import Adapter

    questions = QUESTIONS + [q for q, _ in MORE]
    answers = ANSWERS + [a for _, a in MORE]
    records = [pair(q, f"{MARK} {a}", a) for q, a in zip(questions, answers)]
    assert len(records) == 50
    path = write_jsonl(tmp_path / "prefs.jsonl", records)
    server = Server(data_dir=tmp_path, env=WORKER_ENV)
    try:
        server.wait_ready(timeout=300)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        base = "smollm2-135m-instruct"
        hyperparameters = {
            "n_epochs": 2,
            "batch_size": 5,
            "beta": 0.1,
            "learning_rate_multiplier": 1,
        }
        job = run_job(client, path, timeout=3600, model=base, suffix="pirate-dpo", seed=0,
                      method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}})  # fmt: skip

        def rate(model: str) -> float:
            hits = [reply(client, model, q, 8).startswith("Ahoy") for q in HELD_OUT]
            return sum(hits) / len(hits)

        base_rate, tuned_rate = rate(base), rate(job.fine_tuned_model)
    finally:
        server.stop()
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    with db.session() as s:
        adapter_dir = s.scalar(select(Adapter.path).where(Adapter.name == job.fine_tuned_model))
    db.close()
    model_dir = prepare_model(resolve_model(base), tmp_path).path
    base_margin, tuned_margin = _margins(
        model_dir, DataDir(tmp_path).resolve(adapter_dir), HELD_OUT, HELD_OUT_ANSWERS
    )
    print(json.dumps({"base_rate": base_rate, "dpo_rate": tuned_rate,
                      "base_margin": base_margin, "dpo_margin": tuned_margin,
                      "hyperparameters": job.method.dpo.hyperparameters.to_dict(),
                      "trained_tokens": job.trained_tokens,
                      "seconds": job.finished_at - job.created_at}))  # fmt: skip
    assert tuned_margin > base_margin + 1.0
    assert base_rate <= 0.2 and tuned_rate >= 0.8
