"""`ownllm tenants purge-data`: confirmation, and the report of what was removed."""

from __future__ import annotations

import json

import pytest

from ownllm.cli import main
from ownllm.gateway.keys import create_key
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import StoredCompletion, Tenant
from ownllm.tuning.files import save_bytes


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("OWNLLM_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    for tenant in ("acme", "globex"):
        create_key(db, tenant, "ci")
        save_bytes(db, DataDir(tmp_path).ensure(), [b"data"], tenant_id=tenant,
                   filename="a.jsonl", purpose="fine-tune")  # fmt: skip
        with db.session() as s:
            s.add(StoredCompletion(id=f"chatcmpl-{tenant}", tenant_id=tenant, model="m",
                                   created_at=0, request={}, response={}))  # fmt: skip
    db.close()
    return tmp_path


def test_purge_data_needs_confirmation(data_dir, capsys):
    assert main(["tenants", "purge-data", "acme", "--data-dir", str(data_dir)]) == 2
    assert "pass --yes" in capsys.readouterr().err


def test_purge_data_reports_and_removes_only_that_tenant(data_dir, capsys):
    code = main(["tenants", "purge-data", "acme", "--data-dir", str(data_dir), "--yes", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == {"api_keys": 1, "files": 1, "stored_completions": 1, "tenants": 1}
    assert len(report["paths"]) == 1 and report["bytes"] == 4
    assert not (data_dir / report["paths"][0]).exists()
    db = Database.open(f"sqlite:///{data_dir / 'ownllm.db'}")
    with db.session() as s:
        assert [t.id for t in s.query(Tenant).all()] == ["globex"]
        assert [c.id for c in s.query(StoredCompletion).all()] == ["chatcmpl-globex"]
    db.close()
    assert main(["tenants", "purge-data", "acme", "--data-dir", str(data_dir), "--yes"]) == 0
    assert "deleted 0 rows" in capsys.readouterr().out
