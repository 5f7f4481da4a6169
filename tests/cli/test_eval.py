"""`ownllm eval create|run|show|compare` on a data dir, its runs answered by the eval worker
of a server on the same database (in-process here, over a scripted model)."""

from __future__ import annotations

import json

import pytest

from ownllm.api.app import create_app
from ownllm.api.eval_runner import EvalWorker
from ownllm.api.state import AppState
from ownllm.backends.scripted import counting_backend
from ownllm.cli import main
from ownllm.config import load_config
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from tests.adapters.test_aliases import add_adapter
from tests.evals.scripted import answering

BASE = "smollm2-135m-instruct"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv("OWNLLM_DATABASE_URL", raising=False)
    monkeypatch.setenv("OWNLLM_MODEL", BASE)
    return tmp_path


def cli(home, *args) -> int:
    return main(["eval", "--data-dir", str(home), *args, "--tenant", "acme"])


async def drain(home, tiny_model_dir):
    """A server's eval worker on the data dir's database, over a scripted model whose
    adapter answers in capitals and whose base does not."""
    config = load_config(overrides={"store": {"data_dir": str(home)}})
    db = Database.open(config.store.url)
    state = AppState(config=config, data_dir=DataDir(home).ensure(), db=db)
    state.tokenizer = Tokenizer.from_dir(tiny_model_dir)
    state.backend = counting_backend(state.tokenizer)
    answering(state.backend, lambda prompt, adapters: "PARIS" if adapters else "paris")
    app = create_app(state, start_engine=False)
    await EvalWorker(state, app.state.gateway).drain()
    app.state.gateway.ledger.close()
    db.close()


async def test_create_run_show_and_compare(home, tiny_model_dir, capsys):
    items = home / "items.jsonl"
    items.write_text("".join(json.dumps({"q": f"city {i}", "a": "PARIS"}) + "\n" for i in range(4)))
    criteria = home / "criteria.json"
    criteria.write_text(json.dumps([{"type": "string_check", "name": "exact", "operation": "eq",
                                     "input": "{{sample.output_text}}", "reference": "{{item.a}}"}]))  # fmt: skip
    assert cli(home, "create", "holdout", "--items", str(items), "--criteria", str(criteria),
               "--template", "{{item.q}}") == 0  # fmt: skip
    assert "holdout  4 items, 1 criteria" in capsys.readouterr().out
    config = load_config(overrides={"store": {"data_dir": str(home)}})
    db = Database.open(config.store.url)
    add_adapter(db, "acme", "caps", base_model=BASE)
    db.close()

    assert cli(home, "run", "holdout", "--model", BASE) == 0
    base_run = capsys.readouterr().out.split()[0]
    assert cli(home, "run", "holdout", "--model", "caps") == 0
    caps_run = capsys.readouterr().out.split()[0]
    await drain(home, tiny_model_dir)

    assert cli(home, "show", caps_run, "--items") == 0
    out = capsys.readouterr().out
    assert "completed" in out and "exact: 1.000 (4/4)" in out and "#3 pass: 'PARIS'" in out
    assert cli(home, "compare", base_run, caps_run) == 0
    out = capsys.readouterr().out
    assert "exact" in out and "0.000 (0/4)" in out and "1.000 (4/4)" in out and "+1.000" in out
    assert "4 item(s) changed verdict" in out and "95% CI (Newcombe)" in out
    assert cli(home, "run", "nope", "--model", BASE) == 1
    assert "No eval found" in capsys.readouterr().err


async def test_redteam_run_and_show(home, tiny_model_dir, capsys):
    assert (
        main(["redteam", "--data-dir", str(home), "run", BASE, "--seed", "3", "--tenant", "acme"])
        == 0
    )
    run_id = capsys.readouterr().out.split()[0]
    await drain(home, tiny_model_dir)  # answers "paris" to everything: no leak, no refusal
    assert main(["redteam", "--data-dir", str(home), "show", run_id, "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert "attack success rate 0.000, false-positive rate 0.000" in out
    assert "LLM07" in out and "LLM02:2025 Sensitive Information Disclosure (secrets)" in out
    assert main(["redteam", "--data-dir", str(home), "show", run_id, "--tenant", "globex"]) == 1
    assert "No eval run found" in capsys.readouterr().err
