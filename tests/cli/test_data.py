"""`ownllm data export` writes fine-tuning JSONL from stored completions and can upload it."""

from __future__ import annotations

import json

import pytest

from ownllm.cli import main
from ownllm.gateway import capture
from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.policy import load_policy
from ownllm.gateway.principal import Principal
from ownllm.store.db import Database
from ownllm.store.schema import File
from ownllm.tuning.data import read_examples


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("OWNLLM_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./ownllm.toml from the repository
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    guard = Guard(load_policy())
    for i in range(12):
        tenant = "acme" if i < 11 else "globex"
        completion = {"id": f"chatcmpl-{i}", "created": 1_700_000_000 + i, "model": "tiny",
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": f"Answer {i % 10}"}}]}  # fmt: skip
        capture.store_completion(db, guard, principal=Principal(tenant), completion=completion,
                                 messages=[{"role": "user", "content": f"Question {i % 10}"}])  # fmt: skip
    capture.set_feedback(db, guard, Principal("acme"), "chatcmpl-3", rating=5,
                         correction="A better answer, mail me at bo@example.com")  # fmt: skip
    capture.set_feedback(db, guard, Principal("acme"), "chatcmpl-4", rating=4, correction=None)
    db.close()
    return tmp_path


def test_export_writes_valid_deduplicated_jsonl(data_dir, capsys):
    out = data_dir / "train.jsonl"
    assert (
        main(["data", "export", "--data-dir", str(data_dir), "--tenant", "acme", "--out", str(out)])
        == 0
    )
    lines = out.read_text().splitlines()
    assert len(lines) == 10  # 11 acme rows, one duplicate ("Question 0"/"Answer 0" twice)
    answers = [json.loads(line)["messages"][-1]["content"] for line in lines]
    assert "A better answer, mail me at [EMAIL]" in answers and "Answer 3" not in answers
    assert len(read_examples(out)) == 10  # the trainer's own validation accepts it
    assert "wrote 10 examples" in capsys.readouterr().err


def test_min_rating_since_and_upload(data_dir, capsys):
    out = data_dir / "rated.jsonl"
    code = main(["data", "export", "--data-dir", str(data_dir), "--tenant", "acme",
                 "--min-rating", "4", "--since", "1700000000", "--out", str(out), "--upload"])  # fmt: skip
    assert code == 0
    file_id = capsys.readouterr().out.strip()
    assert file_id.startswith("file-")
    assert len(out.read_text().splitlines()) == 2
    db = Database.open(f"sqlite:///{data_dir / 'ownllm.db'}")
    with db.session() as s:
        row = s.get(File, file_id)
    assert (row.tenant_id, row.purpose) == ("acme", "fine-tune")
    assert (data_dir / row.path).read_bytes() == out.read_bytes()
    db.close()


def test_nothing_to_export_and_upload_without_tenant_fail_clearly(data_dir, capsys):
    out = str(data_dir / "x.jsonl")
    assert (
        main(["data", "export", "--data-dir", str(data_dir), "--model", "other", "--out", out]) == 1
    )
    assert "no stored completions to export" in capsys.readouterr().err
    assert main(["data", "export", "--data-dir", str(data_dir), "--out", out, "--upload"]) == 2
    assert "--upload needs --tenant" in capsys.readouterr().err


def test_export_preferences_writes_dpo_pairs(data_dir, capsys):
    db = Database.open(f"sqlite:///{data_dir / 'ownllm.db'}")
    guard = Guard(load_policy())
    capture.set_feedback(db, guard, Principal("acme"), "chatcmpl-5", rating=1, correction=None)
    db.close()
    out = data_dir / "prefs.jsonl"
    code = main(["data", "export", "--data-dir", str(data_dir), "--tenant", "acme",
                 "--preferences", "--out", str(out)])  # fmt: skip
    assert code == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    # chatcmpl-3's correction beats its answer; "Question 3"/"Question 5" have one rating each
    assert pairs == [
        {
            "input": {"messages": [{"role": "user", "content": "Question 3"}]},
            "preferred_output": [
                {"role": "assistant", "content": "A better answer, mail me at [EMAIL]"}
            ],
            "non_preferred_output": [{"role": "assistant", "content": "Answer 3"}],
        }
    ]
    assert "wrote 1 preference pairs" in capsys.readouterr().err
    code = main(["data", "export", "--data-dir", str(data_dir), "--preferences", "--min-rating",
                 "4", "--out", str(out)])  # fmt: skip
    assert code == 2 and "--min-rating does not apply" in capsys.readouterr().err
