"""Fine-tuning jobs in the database: the state machine, the queue, events and checkpoints.

    validating_files → queued → running → succeeded | failed | cancelled
                         ↑         │
                         └─────────┘  worker lost (stale heartbeat): requeued to
                                      resume from the last checkpoint, or failed
                                      after `max_attempts`

Claiming is one atomic statement per dialect, so several workers never take
the same job: PostgreSQL selects `FOR UPDATE SKIP LOCKED`; SQLite (one
writer at a time) updates `WHERE id = ? AND status = 'queued'` and checks
the row count. A worker owns a job while its id is in `worker_id`; every
write the worker makes is conditional on that, so a worker that lost its
job (declared dead, job requeued) cannot overwrite the new owner's state.

Claims are fair across tenants: the next job is the oldest queued job of the
tenant with the fewest running jobs, ties going to the tenant whose last job
started longest ago (a tenant never served first). So a tenant that queues
fifty jobs holds one worker at a time while others have jobs waiting, and a
single worker takes tenants in turn.

A job that ends (succeeded, failed, cancelled) with tokens trained writes one
usage-ledger row in the same transaction as its final status, so it is
metered exactly once: endpoint `fine_tuning.jobs`, the job's tenant and the
key that created it, `trained_tokens` (every epoch's, as OpenAI bills them;
a failed or cancelled job's count up to its last step, status error or
cancelled).

Left out: priorities, and weights between tenants.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased

from ownllm.ids import new_id
from ownllm.store.db import Database
from ownllm.store.schema import FineTuningJob, JobCheckpoint, JobEvent, UsageRecord, usage_day

ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
USAGE_ENDPOINT = "fine_tuning.jobs"
_USAGE_STATUS = {"succeeded": "ok", "failed": "error", "cancelled": "cancelled"}


def add_event(
    db: Database, job_id: str, message: str, *, level: str = "info", data: dict | None = None
) -> None:
    with db.session() as s:
        s.add(
            JobEvent(
                id=new_id("ftevent"),
                job_id=job_id,
                seq=time.time_ns() // 1000,  # microseconds: ordered across processes
                created_at=int(time.time()),
                level=level,
                type="metrics" if data is not None and "step" in data else "message",
                message=message,
                data=data,
            )
        )


def get_job(db: Database, job_id: str) -> FineTuningJob | None:
    with db.session() as s:
        return s.get(FineTuningJob, job_id)


def set_status(db: Database, job_id: str, status: str, *, worker_id: str | None = None, **values):
    """Move a job to `status` (optionally only while `worker_id` owns it); False if not applied."""
    query = update(FineTuningJob).where(FineTuningJob.id == job_id)
    if worker_id is not None:
        query = query.where(FineTuningJob.worker_id == worker_id, FineTuningJob.status == "running")
    else:
        query = query.where(FineTuningJob.status.not_in(FINAL))
    if status in FINAL:
        values.setdefault("finished_at", int(time.time()))
        values.setdefault("estimated_finish", None)
    with db.session() as s:
        done = s.execute(query.values(status=status, **values)).rowcount == 1
        if done and status in FINAL:
            _meter(s, s.get(FineTuningJob, job_id))
        return done


def _meter(session: Any, job: FineTuningJob) -> None:
    """The ledger row of a job that just ended, in the transaction that ended it."""
    if not job.trained_tokens:
        return  # nothing was trained (refused files, cancelled while queued)
    now = time.time()
    session.add(
        UsageRecord(
            request_id=job.id,
            created_at=now,
            day=usage_day(now),
            tenant_id=job.tenant_id,
            key_id=job.key_id,
            endpoint=USAGE_ENDPOINT,
            model=job.model,
            trained_tokens=job.trained_tokens,
            latency_ms=max(0.0, now - (job.started_at or now)) * 1000,
            status=_USAGE_STATUS[job.status],
            error_code=(job.error or {}).get("code"),
        )
    )


def _next_queued():
    """The id of the job to claim next: see "Claims are fair across tenants" above."""
    job, other = FineTuningJob, aliased(FineTuningJob)
    same_tenant = other.tenant_id == job.tenant_id
    num_running = (
        select(func.count()).where(same_tenant, other.status == "running").scalar_subquery()
    )
    last_started = select(func.max(other.started_at)).where(same_tenant).scalar_subquery()
    return (
        select(job.id)
        .where(job.status == "queued")
        .order_by(num_running, func.coalesce(last_started, -1), job.created_at, job.id)
        .limit(1)
    )


def claim(db: Database, worker_id: str) -> FineTuningJob | None:
    """Take the next queued job (fair across tenants) for `worker_id`, or None when none."""
    now = time.time()
    values = {
        "status": "running",
        "worker_id": worker_id,
        "heartbeat_at": now,
        "attempts": FineTuningJob.attempts + 1,
        "started_at": func.coalesce(FineTuningJob.started_at, int(now)),
    }

    def take(s: Any, picked: Any) -> str | None:
        queued = (FineTuningJob.id == picked.id, FineTuningJob.status == "queued")
        done = s.execute(update(FineTuningJob).where(*queued).values(**values)).rowcount == 1
        return picked.id if done else None

    job_id = db.claim_first(_next_queued(), FineTuningJob, take)
    return None if job_id is None else get_job(db, job_id)


def heartbeat(db: Database, job_id: str, worker_id: str) -> tuple[bool, bool]:
    """Record that `worker_id` is alive on `job_id`: (still owns it, cancel requested)."""
    with db.session() as s:
        owned = s.execute(
            update(FineTuningJob)
            .where(
                FineTuningJob.id == job_id,
                FineTuningJob.worker_id == worker_id,
                FineTuningJob.status == "running",
            )
            .values(heartbeat_at=time.time())
        ).rowcount
        cancel = s.scalar(select(FineTuningJob.cancel_requested).where(FineTuningJob.id == job_id))
    return bool(owned), bool(cancel)


def update_progress(db: Database, job_id: str, worker_id: str, **values: Any) -> None:
    with db.session() as s:
        s.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.worker_id == worker_id)
            .values(**values)
        )


def release(db: Database, job_id: str, worker_id: str) -> bool:
    """Hand a running job back to the queue (its worker is shutting down)."""
    with db.session() as s:
        return (
            s.execute(
                update(FineTuningJob)
                .where(
                    FineTuningJob.id == job_id,
                    FineTuningJob.worker_id == worker_id,
                    FineTuningJob.status == "running",
                )
                .values(status="queued", worker_id=None, heartbeat_at=None)
            ).rowcount
            == 1
        )


def recover_stale(db: Database, timeout_s: float, max_attempts: int) -> list[str]:
    """Requeue (or fail, after `max_attempts`) running jobs whose worker stopped beating.

    Each job is taken over with an UPDATE conditional on the heartbeat it had,
    so two workers sweeping at once act on it only once.
    """
    cutoff = time.time() - timeout_s
    with db.session() as s:
        stale = s.execute(
            select(FineTuningJob.id, FineTuningJob.heartbeat_at, FineTuningJob.attempts).where(
                FineTuningJob.status == "running", FineTuningJob.heartbeat_at < cutoff
            )
        ).all()
    recovered = []
    for job_id, beat, attempts in stale:
        retry = attempts < max_attempts
        taken = (
            FineTuningJob.id == job_id,
            FineTuningJob.status == "running",
            FineTuningJob.heartbeat_at == beat,
        )
        message = f"The worker running this job stopped {attempts} time(s); giving up."
        with db.session() as s:
            done = _end_attempt(s, job_id, taken, retry, message)
        if done:
            recovered.append(job_id)
            _note_end(db, job_id, retry, "Worker lost" if retry else "Worker lost too many times")
    return recovered


def requeue_attempt(db: Database, job_id: str, worker_id: str, max_attempts: int, why: str) -> bool:
    """End `worker_id`'s failed attempt at a job: requeued to resume from its last
    checkpoint, or failed after `max_attempts`. False when the worker no longer owns it."""
    owned = (
        FineTuningJob.id == job_id,
        FineTuningJob.worker_id == worker_id,
        FineTuningJob.status == "running",
    )
    with db.session() as s:
        job = s.scalars(select(FineTuningJob).where(*owned)).first()
        if job is None:
            return False
        retry = job.attempts < max_attempts
        message = f"{why}; the job was started {job.attempts} time(s), giving up."
        done = _end_attempt(s, job_id, owned, retry, message)
    if done:
        _note_end(db, job_id, retry, why)
    return done


def _end_attempt(s: Any, job_id: str, where: tuple, retry: bool, message: str) -> bool:
    """End the running attempt at a job if `where` still holds: back to the queue, or failed
    (and metered) with `message`. False when `where` no longer holds."""
    values: dict[str, Any] = {"worker_id": None, "heartbeat_at": None}
    if retry:
        values["status"] = "queued"
    else:
        values.update(
            status="failed",
            finished_at=int(time.time()),
            estimated_finish=None,
            error={
                "code": "worker_lost",
                "message": f"{message} Create the job again to retry.",
                "param": None,
            },
        )
    done = s.execute(update(FineTuningJob).where(*where).values(**values)).rowcount == 1
    if done and not retry:
        _meter(s, s.get(FineTuningJob, job_id))
    return done


def _note_end(db: Database, job_id: str, retry: bool, why: str) -> None:
    then = "job requeued to resume from its last checkpoint" if retry else "job failed"
    add_event(db, job_id, f"{why}; {then}.", level="warn" if retry else "error")


def request_cancel(db: Database, job_id: str) -> str:
    """Cancel now when not running (the new status), else flag it for the worker ("running")."""
    with db.session() as s:
        job = s.get(FineTuningJob, job_id)
        if job is None or job.status in FINAL:
            return job.status if job else "missing"
        job.cancel_requested = True
        if job.status != "running":
            job.status = "cancelled"
            job.finished_at = int(time.time())
            job.estimated_finish = None
            _meter(s, job)  # a requeued job may have trained before
        status = job.status
    add_event(
        db, job_id, "Job cancellation requested." if status == "running" else "Job cancelled."
    )
    return status


def add_checkpoint(
    db: Database, job_id: str, step: int, model_name: str, adapter_id: str, metrics: dict
) -> None:
    with db.session() as s:
        s.add(
            JobCheckpoint(
                id=new_id("ftckpt"),
                job_id=job_id,
                step=step,
                model_name=model_name,
                adapter_id=adapter_id,
                metrics=metrics,
                created_at=int(time.time()),
            )
        )


def latest_checkpoint(db: Database, job_id: str) -> JobCheckpoint | None:
    with db.session() as s:
        return s.scalars(
            select(JobCheckpoint)
            .where(JobCheckpoint.job_id == job_id)
            .order_by(JobCheckpoint.step.desc())
            .limit(1)
        ).first()
