"""`ownllm models …` on the data dir's database: alias, a refused promotion that prints
its figures and exits 1, promote once the gate allows it, rollback, history."""

from __future__ import annotations

import pytest

from ownllm.cli import main
from ownllm.config import load_config
from ownllm.store.db import Database
from tests.adapters.test_aliases import add_adapter


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("OWNLLM_DATABASE_URL", raising=False)
    monkeypatch.setenv("OWNLLM_MODEL", "smollm2-135m-instruct")
    return tmp_path


def cli(data_dir, *args) -> int:
    return main(["models", "--data-dir", str(data_dir), *args, "--tenant", "acme"])


def test_alias_promote_refused_then_allowed_rollback_history(data_dir, capsys):
    config = load_config(overrides={"store": {"data_dir": str(data_dir)}})
    db = Database.open(config.store.url)
    v2 = add_adapter(db, "acme", "support-v2", base_model="smollm2-135m-instruct")
    db.close()
    args = ("--gate-eval", "support-holdout:0.8", "--max-redteam", "0.05")
    assert cli(data_dir, "alias", "support", *args) == 0
    assert "support  ->  smollm2-135m-instruct  (version 1)" in capsys.readouterr().out

    assert cli(data_dir, "promote", "support", "--to", "support-v2") == 1
    captured = capsys.readouterr()
    assert "not promoted to support-v2" in captured.out
    assert "eval support-holdout: pass rate -  (min 0.800)" in captured.out
    assert "no completed run of eval 'support-holdout' on support-v2" in captured.err

    assert cli(data_dir, "gate", "support") == 0  # an empty gate
    capsys.readouterr()
    assert cli(data_dir, "promote", "support", "--to", "support-v2") == 0
    assert "support  ->  support-v2  (version 2)" in capsys.readouterr().out
    assert cli(data_dir, "aliases") == 0
    assert "support  ->  support-v2  (version 2" in capsys.readouterr().out
    assert cli(data_dir, "rollback", "support") == 0
    assert "support  ->  smollm2-135m-instruct  (version 3)" in capsys.readouterr().out
    assert cli(data_dir, "history", "support") == 0
    lines = capsys.readouterr().out.splitlines()
    actions = [line.split()[3] for line in lines if line[:2] == "20"]
    assert actions == ["create", "refused", "promote", "rollback"]
    assert any(v2 in line for line in lines)

    assert cli(data_dir, "rollback", "support") == 1
    assert "no earlier version" in capsys.readouterr().err
    assert cli(data_dir, "alias", "x", "--gate-eval", "holdout") == 2
    assert "expected EVAL:MIN" in capsys.readouterr().err
