"""Batches and their lines in the database: create, read, cancel, and the workers' claims.

Claims are leases, as fine-tuning claims are (`ownllm.tuning.jobs`): a worker takes open
lines with one conditional UPDATE (PostgreSQL selects them `FOR UPDATE SKIP LOCKED`
first, so workers never wait on each other), renews its lease while they run, and
writes a result only while it still holds the line. A line whose worker stopped renewing
is open again once its lease ends, up to `max_attempts` starts, then failed. So a worker
killed mid-batch loses only its running lines' work, which the next worker answers, and
no line is answered twice: a result arriving after its lease was taken over is dropped.

Counts (`request_counts`) are read from the lines, never kept twice. Batches are
tenant-scoped: another tenant's batch does not exist (404).

Left out: fairness between tenants' batches (lines are taken oldest batch first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Update, case, func, or_, select, update

from ownllm.batches.input import InputLine
from ownllm.errors import ConflictError
from ownllm.ids import new_id
from ownllm.store.db import Database
from ownllm.store.schema import Batch, BatchLine
from ownllm.store.tenancy import get_visible, visible_rows

OPEN = ("pending", "running")
ANSWERED = ("done", "failed", "expired")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")
WINDOWS = {"24h": 24 * 3600}


@dataclass(frozen=True)
class Counts:
    total: int = 0
    completed: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return {"total": self.total, "completed": self.completed, "failed": self.failed}


def batch_object(row: Batch, counts: Counts) -> dict[str, Any]:
    """The OpenAI batch object. A timestamp, file id or `errors` not set yet is left out
    rather than null: OpenAI's answers carry null, but its spec types them integer, string
    and object, and the official client reads a missing one as None."""
    errors = None
    if row.errors:
        errors = {"object": "list", "data": row.errors}
    obj = {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": row.created_at,
        "in_progress_at": row.in_progress_at,
        "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at,
        "completed_at": row.completed_at,
        "failed_at": row.failed_at,
        "expired_at": row.expired_at,
        "cancelling_at": row.cancelling_at,
        "cancelled_at": row.cancelled_at,
        "request_counts": counts.to_dict(),
    }
    return {**{k: v for k, v in obj.items() if v is not None}, "metadata": row.metadata_}


# -- what clients do ------------------------------------------------------------------------


def create(
    db: Database,
    *,
    tenant_id: str,
    key_id: str | None,
    endpoint: str,
    input_file_id: str,
    completion_window: str,
    metadata: dict[str, str] | None,
) -> Batch:
    now = int(time.time())
    row = Batch(
        id=new_id("batch", "_"),
        tenant_id=tenant_id,
        key_id=key_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=completion_window,
        status="validating",
        metadata_=metadata,
        num_lines=0,
        created_at=now,
        expires_at=now + WINDOWS[completion_window],
    )
    with db.session() as s:
        s.add(row)
    return row


def get(db: Database, principal: Any, batch_id: str) -> Batch:
    """The batch if the principal may see it; NotFoundError otherwise (never 403)."""
    return get_visible(
        db, Batch, batch_id, principal, f"No such Batch object: {batch_id}", "batch_id"
    )


def list_batches(
    db: Database, principal: Any, *, after: str | None, limit: int
) -> tuple[list[Batch], bool]:
    """Newest first; ids sort in creation order, so `after` (an id) is the cursor."""
    query = visible_rows(select(Batch), Batch, principal)
    if after:
        query = query.where(Batch.id < after)
    with db.session() as s:
        rows = list(s.scalars(query.order_by(Batch.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def counts(db: Database, batches: list[Batch]) -> dict[str, Counts]:
    """request_counts of each batch, from its lines."""
    ids = [b.id for b in batches]
    if not ids:
        return {}
    is_done = case((BatchLine.status == "done", 1), else_=0)
    is_failed = case((BatchLine.status.in_(("failed", "expired")), 1), else_=0)
    query = (
        select(BatchLine.batch_id, func.sum(is_done), func.sum(is_failed))
        .where(BatchLine.batch_id.in_(ids))
        .group_by(BatchLine.batch_id)
    )
    with db.session() as s:
        found = {bid: (int(d or 0), int(f or 0)) for bid, d, f in s.execute(query)}
    return {b.id: Counts(b.num_lines, *found.get(b.id, (0, 0))) for b in batches}


def cancel(db: Database, principal: Any, batch_id: str) -> Batch:
    """validating / in_progress → cancelling; lines not started are dropped, running ones
    finish. Cancelling a cancelled or cancelling batch returns it; an ended one is a 409."""
    row = get(db, principal, batch_id)
    now = int(time.time())
    with db.session() as s:
        done = s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status.in_(("validating", "in_progress")))
            .values(status="cancelling", cancelling_at=now)
        ).rowcount
        if done:
            s.execute(
                update(BatchLine)
                .where(BatchLine.batch_id == batch_id, BatchLine.status == "pending")
                .values(status="cancelled")
            )
        row = s.get(Batch, batch_id)
    if not done and row.status not in ("cancelling", "cancelled"):
        raise ConflictError(
            f"Cannot cancel a batch with status '{row.status}'.", code="batch_not_cancellable"
        )
    return row


# -- what workers do ------------------------------------------------------------------------


def _is_free(model: Any, now: float):
    return or_(model.worker_id.is_(None), model.lease_until < now)


def claim_batch(db: Database, worker_id: str, lease_s: float) -> Batch | None:
    """A batch with work for one worker alone: validating, or with no open lines left (to
    finalize), or past its window (to expire its open lines). Its lease is the worker's."""
    now = time.time()
    no_open_lines = ~(
        select(BatchLine.id)
        .where(BatchLine.batch_id == Batch.id, BatchLine.status.in_(OPEN))
        .exists()
    )
    query = (
        select(Batch.id)
        .where(
            _is_free(Batch, now),
            or_(
                Batch.status == "validating",
                (Batch.status.in_(("in_progress", "finalizing", "cancelling")) & no_open_lines),
                (Batch.status == "in_progress") & (Batch.expires_at < now),
            ),
        )
        .order_by(Batch.created_at, Batch.id)
        .limit(1)
    )
    with db.session() as s:
        if db.is_postgres:
            query = query.with_for_update(of=Batch, skip_locked=True)
        batch_id = s.scalar(query)
        if batch_id is None:
            return None
        done = s.execute(
            update(Batch)
            .where(Batch.id == batch_id, _is_free(Batch, now))
            .values(worker_id=worker_id, lease_until=now + lease_s)
        ).rowcount
        return s.get(Batch, batch_id) if done else None


def release_batch(db: Database, batch_id: str, worker_id: str) -> None:
    with db.session() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.worker_id == worker_id)
            .values(worker_id=None, lease_until=None)
        )


def start(db: Database, batch: Batch, worker_id: str, lines: list[InputLine]) -> bool:
    """validating → in_progress with its lines, in one transaction (a cancel that came
    first wins: the batch is then cancelled with no line). False if the claim was lost."""
    now = int(time.time())
    with db.session() as s:
        mine = (Batch.id == batch.id, Batch.worker_id == worker_id)
        done = s.execute(
            update(Batch)
            .where(*mine, Batch.status == "validating")
            .values(status="in_progress", in_progress_at=now, num_lines=len(lines))
        ).rowcount
        if not done:
            return False
        s.add_all(
            BatchLine(
                batch_id=batch.id,
                line=x.line,
                custom_id=x.custom_id,
                body=x.body,
                status="pending",
                attempts=0,
            )
            for x in lines
        )
    return True


def finish(db: Database, batch_id: str, worker_id: str, status: str, **values: Any) -> bool:
    """The batch ends as `status` (with its timestamp); False if the claim was lost."""
    now = int(time.time())
    values.setdefault(f"{status}_at", now)
    with db.session() as s:
        return (
            s.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.worker_id == worker_id, Batch.status.in_(ACTIVE))
                .values(status=status, worker_id=None, lease_until=None, **values)
            ).rowcount
            == 1
        )


def set_finalizing(db: Database, batch_id: str, worker_id: str) -> None:
    with db.session() as s:
        s.execute(
            update(Batch)
            .where(
                Batch.id == batch_id, Batch.worker_id == worker_id, Batch.status == "in_progress"
            )
            .values(status="finalizing", finalizing_at=int(time.time()))
        )


def expire_open_lines(db: Database, batch_id: str) -> None:
    """The window is over: lines not started, or whose worker was lost, are expired (a
    line running under a live lease still finishes)."""
    now = time.time()
    error = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    with db.session() as s:
        for line in s.scalars(
            select(BatchLine).where(
                BatchLine.batch_id == batch_id,
                or_(
                    BatchLine.status == "pending",
                    (BatchLine.status == "running") & (BatchLine.lease_until < now),
                ),
            )
        ):
            line.status = "expired"
            line.worker_id = None
            line.result = result_line(line, None, error)


def claim_lines(
    db: Database, worker_id: str, limit: int, lease_s: float, max_attempts: int
) -> list[BatchLine]:
    """Up to `limit` open lines of running batches (oldest batch first) for `worker_id`."""
    now = time.time()
    lease = now + lease_s
    live = select(Batch.id).where(Batch.status == "in_progress", Batch.expires_at >= now)
    claimable = (
        BatchLine.batch_id.in_(live),
        BatchLine.attempts < max_attempts,
        or_(
            BatchLine.status == "pending",
            (BatchLine.status == "running") & (BatchLine.lease_until < now),
        ),
    )
    query = select(BatchLine.id).where(*claimable).order_by(BatchLine.id).limit(limit)
    with db.session() as s:
        _fail_exhausted(s, now, max_attempts)
        if db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        ids = list(s.scalars(query))
        if not ids:
            return []
        s.execute(
            update(BatchLine)
            .where(BatchLine.id.in_(ids), *claimable)
            .values(
                status="running",
                worker_id=worker_id,
                lease_until=lease,
                attempts=BatchLine.attempts + 1,
            )
        )
        return list(
            s.scalars(
                select(BatchLine)
                .where(
                    BatchLine.id.in_(ids),
                    BatchLine.worker_id == worker_id,
                    BatchLine.lease_until == lease,
                )
                .order_by(BatchLine.id)
            )
        )


def _fail_exhausted(session: Any, now: float, max_attempts: int) -> None:
    """Lines whose workers were lost `max_attempts` times fail, so no line loops forever."""
    for line in session.scalars(
        select(BatchLine)
        .where(
            BatchLine.status == "running",
            BatchLine.lease_until < now,
            BatchLine.attempts >= max_attempts,
        )
        .limit(100)
    ):
        line.status = "failed"
        line.worker_id = None
        line.result = result_line(
            line,
            None,
            {
                "code": "worker_lost",
                "message": f"The worker running this request stopped {max_attempts} times.",
            },
        )


def _held(worker_id: str, *where: Any) -> Update:
    """An UPDATE of the lines among `where`'s that `worker_id` still runs (one whose lease
    another worker has taken over is left alone)."""
    return update(BatchLine).where(
        *where, BatchLine.worker_id == worker_id, BatchLine.status == "running"
    )


def renew(db: Database, worker_id: str, line_ids: list[int], lease_s: float) -> None:
    """Extend the lease of the lines `worker_id` still runs (and of the batch it holds)."""
    if not line_ids:
        return
    with db.session() as s:
        s.execute(
            _held(worker_id, BatchLine.id.in_(line_ids)).values(lease_until=time.time() + lease_s)
        )


def renew_batch(db: Database, batch_id: str, worker_id: str, lease_s: float) -> None:
    with db.session() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.worker_id == worker_id)
            .values(lease_until=time.time() + lease_s)
        )


def record(db: Database, line_id: int, worker_id: str, status: str, result: dict) -> bool:
    """Store a line's result while `worker_id` still holds it; False when it was lost (the
    result is dropped: the line's new owner answers it)."""
    with db.session() as s:
        return (
            s.execute(
                _held(worker_id, BatchLine.id == line_id).values(
                    status=status, result=result, worker_id=None, lease_until=None
                )
            ).rowcount
            == 1
        )


def release(db: Database, line_id: int, worker_id: str) -> None:
    """Hand a line back unanswered (the engine was full, the worker is stopping); the
    start does not count against `max_attempts`."""
    with db.session() as s:
        s.execute(
            _held(worker_id, BatchLine.id == line_id).values(
                status="pending",
                worker_id=None,
                lease_until=None,
                attempts=BatchLine.attempts - 1,
            )
        )


def answered_lines(db: Database, batch_id: str) -> list[BatchLine]:
    """The lines with a result, in input order."""
    with db.session() as s:
        return list(
            s.scalars(
                select(BatchLine)
                .where(BatchLine.batch_id == batch_id, BatchLine.status.in_(ANSWERED))
                .order_by(BatchLine.line)
            )
        )


def result_line(line: BatchLine, response: dict | None, error: dict | None) -> dict:
    """One line of an output or error file, in OpenAI's format."""
    return {
        "id": new_id("batch_req", "_"),
        "custom_id": line.custom_id,
        "response": response,
        "error": error,
    }


def batch_by_id(db: Database, batch_id: str) -> Batch:
    """A batch a worker holds a line of (no tenant check: the worker is the server)."""
    with db.session() as s:
        return s.get(Batch, batch_id)
