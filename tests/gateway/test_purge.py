"""`purge_tenant` leaves no row or file of the tenant behind; other tenants keep theirs."""

from __future__ import annotations

import json
import time

from sqlalchemy import text

from ownllm.gateway.keys import create_key
from ownllm.gateway.purge import purge_tenant
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import (
    Adapter,
    Base,
    FineTuningJob,
    GuardEvent,
    JobCheckpoint,
    JobEvent,
    QuotaCounter,
    StoredCompletion,
    UsageRecord,
)
from ownllm.tuning.files import save_bytes


def seed_tenant(db: Database, data_dir: DataDir, tenant: str) -> dict[str, str]:
    """One row in every tenant-owned table and the blobs they point at."""
    key = create_key(db, tenant, "ci")
    file = save_bytes(db, data_dir, [b'{"messages": []}\n'], tenant_id=tenant,
                      filename="train.jsonl", purpose="fine-tune")  # fmt: skip
    job_id, adapter_id = f"ftjob-{tenant}", f"adapter-{tenant}"
    ckpt = data_dir.checkpoints / job_id / "step-1"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"x" * 100)
    adapter_dir = data_dir.adapters / adapter_id
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text("{}")
    now = int(time.time())
    with db.session() as s:
        s.add(FineTuningJob(id=job_id, tenant_id=tenant, model="tiny", base_model="tiny",
                            training_file=file.id, hyperparameters={}, lora={}, seed=1,
                            status="succeeded", result_files=[], created_at=now))  # fmt: skip
        s.flush()
        s.add(JobEvent(id=f"ftevent-{tenant}", job_id=job_id, seq=1, created_at=now,
                       level="info", type="message", message="done"))  # fmt: skip
        s.add(JobCheckpoint(id=f"ftckpt-{tenant}", job_id=job_id, step=1, model_name="m",
                            adapter_id=adapter_id, metrics={}, created_at=now))  # fmt: skip
        s.add(Adapter(id=adapter_id, name=f"ft:tiny:{tenant}:x:{job_id}", tenant_id=tenant,
                      base_model="tiny", base_sha256="0", source="trained", rank=8,
                      target_modules=["q_proj"], size_bytes=2, sha256="0",
                      path=data_dir.relative(adapter_dir), created_at=now))  # fmt: skip
        s.add(UsageRecord(request_id=f"chatcmpl-{tenant}", created_at=now, tenant_id=tenant,
                          key_id=key.info.id, endpoint="chat.completions", model="tiny",
                          status="ok"))  # fmt: skip
        s.add(QuotaCounter(scope=f"tenant:{tenant}", period="2026-11", used_tokens=5))
        s.add(QuotaCounter(scope=f"key:{key.info.id}", period="2026-11", used_tokens=5))
        s.add(StoredCompletion(id=f"chatcmpl-{tenant}", tenant_id=tenant, model="tiny",
                               created_at=now, request={}, response={}))  # fmt: skip
        s.add(GuardEvent(created_at=now, tenant_id=tenant, request_id=f"chatcmpl-{tenant}",
                         stage="input", action="flag", rule_ids=[], counts={}))  # fmt: skip
    return {"key_id": key.info.id, "file": data_dir.relative(data_dir.files / file.id)}


def rows_mentioning(db: Database, needles: list[str]) -> dict[str, int]:
    out = {}
    with db.engine.connect() as c:
        for table in Base.metadata.sorted_tables:
            rows = [
                json.dumps(list(map(str, r)))
                for r in c.execute(text(f"SELECT * FROM {table.name}"))
            ]
            n = sum(1 for r in rows if any(needle in r for needle in needles))
            if n:
                out[table.name] = n
    return out


def files_under(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_purge_tenant_removes_every_row_and_blob(db_url, tmp_path):
    db = Database.open(db_url)
    data_dir = DataDir(tmp_path).ensure()
    acme = seed_tenant(db, data_dir, "acme")
    globex = seed_tenant(db, data_dir, "globex")
    before_globex = rows_mentioning(db, ["globex", globex["key_id"]])
    assert set(rows_mentioning(db, ["acme", acme["key_id"]])) == {
        "tenants", "api_keys", "files", "fine_tuning_jobs", "job_events", "job_checkpoints",
        "adapters", "usage", "quota_counters", "stored_completions", "guard_events",
    }  # fmt: skip
    report = purge_tenant(db, data_dir, "acme")
    assert rows_mentioning(db, ["acme", acme["key_id"]]) == {}
    assert rows_mentioning(db, ["globex", globex["key_id"]]) == before_globex
    assert report.rows["quota_counters"] == 2 and report.rows["tenants"] == 1
    assert report.num_rows == 12
    left = files_under(tmp_path)
    assert not any("acme" in f for f in left) and acme["file"] not in left
    assert globex["file"] in left and any("globex" in f for f in left)
    assert sorted(report.paths) == sorted(
        [acme["file"], "adapters/adapter-acme", "checkpoints/ftjob-acme"]
    )
    assert report.num_bytes > 100
    again = purge_tenant(db, data_dir, "acme")  # idempotent: nothing left to remove
    assert (again.num_rows, again.paths) == (0, [])
    db.close()


def test_keep_account_keeps_the_tenant_and_its_keys(db_url, tmp_path):
    db = Database.open(db_url)
    data_dir = DataDir(tmp_path).ensure()
    acme = seed_tenant(db, data_dir, "acme")
    report = purge_tenant(db, data_dir, "acme", keep_account=True)
    assert "tenants" not in report.rows and "api_keys" not in report.rows
    assert rows_mentioning(db, ["acme", acme["key_id"]]) == {"tenants": 1, "api_keys": 1}
    db.close()
