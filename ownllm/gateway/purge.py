"""Deleting data: the retention purge of captured traffic, and erasing a whole tenant.

`purge_expired` deletes stored completions, stored responses and guard events older than
`capture.retention_days`; `ownllm serve` runs it every `capture.purge_interval_s`
(`retention_loop`). `purge_tenant` deletes every row a tenant owns — in every
table with a `tenant_id` column, in tables whose foreign keys point at those
rows (job events, checkpoints, keys), its quota counters — and every blob
under the data dir those rows name (files, adapters, checkpoints), and reports
what it removed. Blobs are deleted after the rows are committed, so a failed
purge leaves no row pointing at a missing file; rerunning it finishes the job.

Left out: adapters already loaded into a running server stay in its memory
until it evicts or restarts them (their rows and files are gone, so no new
request can name them).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ownllm.config import CaptureConfig
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import Base, GuardEvent, StoredCompletion, StoredResponse

log = logging.getLogger("ownllm.purge")
DAY_S = 86400


def purge_expired(db: Database, retention_days: int, now: float | None = None) -> dict[str, int]:
    """Delete captured rows older than `retention_days` (0: keep all); counts per table."""
    if retention_days <= 0:
        return {}
    cutoff = (time.time() if now is None else now) - retention_days * DAY_S
    with db.session() as session:
        completions = session.execute(
            delete(StoredCompletion).where(StoredCompletion.created_at < cutoff)
        ).rowcount
        responses = session.execute(
            delete(StoredResponse).where(StoredResponse.created_at < cutoff)
        ).rowcount
        events = session.execute(delete(GuardEvent).where(GuardEvent.created_at < cutoff)).rowcount
    return {
        "stored_completions": completions or 0,
        "stored_responses": responses or 0,
        "guard_events": events or 0,
    }


async def retention_loop(db: Database, retention_days: int, interval_s: float) -> None:
    """Run `purge_expired` now and then every `interval_s` seconds until cancelled."""
    while True:
        try:
            removed = await asyncio.to_thread(purge_expired, db, retention_days)
            if any(removed.values()):
                log.info("retention purge removed %s", removed)
        except Exception:  # a failed purge is retried next interval; serving goes on
            log.exception("retention purge failed")
        await asyncio.sleep(interval_s)


@dataclass
class PurgeReport:
    tenant_id: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    paths: list[str] = field(default_factory=list)  # relative to the data dir
    num_bytes: int = 0

    @property
    def num_rows(self) -> int:
        return sum(self.rows.values())


def _owned(
    table: Table, tenant_id: str, key_ids: list[str], seen: frozenset[str] = frozenset()
) -> ColumnElement | None:
    """A WHERE clause selecting the rows of `table` that belong to `tenant_id`, or None.
    `key_ids` are the tenant's API keys, read before any row is deleted."""
    if table.name == "tenants":
        return table.c.id == tenant_id
    clauses = []
    if "tenant_id" in table.c:
        clauses.append(table.c.tenant_id == tenant_id)
    if table.name == "quota_counters" and "scope" in table.c:  # scope: tenant:<id> | key:<id>
        scopes = [f"tenant:{tenant_id}"] + [f"key:{k}" for k in key_ids]
        clauses.append(table.c.scope.in_(scopes))
    for fk in table.foreign_keys:
        parent = fk.column.table
        if parent.name in seen or parent is table:
            continue
        parent_clause = _owned(parent, tenant_id, key_ids, seen | {table.name})
        if parent_clause is not None:
            clauses.append(fk.parent.in_(select(fk.column).where(parent_clause)))
    return or_(*clauses) if clauses else None


def _blob_paths(session: Any, data_dir: DataDir, tenant_id: str, key_ids: list[str]) -> list[Path]:
    paths = []
    for table in Base.metadata.sorted_tables:
        clause = _owned(table, tenant_id, key_ids)
        if clause is None:
            continue
        if "path" in table.c:
            for (relative,) in session.execute(select(table.c.path).where(clause)):
                if relative:
                    paths.append(data_dir.resolve(relative))
        if table.name == "fine_tuning_jobs":
            for (job_id,) in session.execute(select(table.c.id).where(clause)):
                paths.append(data_dir.checkpoints / job_id)
    return paths


def purge_tenant(db: Database, data_dir: DataDir, tenant_id: str, *,
                 keep_account: bool = False) -> PurgeReport:  # fmt: skip
    """Delete everything `tenant_id` stored: rows in every table and their blobs.
    `keep_account` keeps the tenant row and its API keys (the data goes, the account stays)."""
    report = PurgeReport(tenant_id)
    account_tables = ("tenants", "api_keys") if keep_account else ()
    with db.session() as session:
        keys = Base.metadata.tables["api_keys"]
        key_ids = list(
            session.execute(select(keys.c.id).where(keys.c.tenant_id == tenant_id)).scalars()
        )
        paths = _blob_paths(session, data_dir, tenant_id, key_ids)
        for table in reversed(Base.metadata.sorted_tables):  # children before parents
            if table.name in account_tables:
                continue
            clause = _owned(table, tenant_id, key_ids)
            if clause is None:
                continue
            n = session.execute(delete(table).where(clause)).rowcount or 0
            if n:
                report.rows[table.name] = n
    root = data_dir.root.resolve()
    for path in paths:
        resolved = path.resolve()
        if root not in resolved.parents or not resolved.exists():
            continue  # never outside the data dir
        report.num_bytes += _size(resolved)
        if resolved.is_dir():
            shutil.rmtree(resolved)
        else:
            resolved.unlink()
        report.paths.append(str(resolved.relative_to(root)))
    return report


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_retention(db: Database | None, config: CaptureConfig) -> asyncio.Task | None:
    """Start the periodic retention purge for an app (None when retention is off)."""
    if db is None or config.retention_days <= 0:
        return None
    return asyncio.create_task(retention_loop(db, config.retention_days, config.purge_interval_s))
