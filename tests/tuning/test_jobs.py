import threading
import time

from ownllm.ids import new_id
from ownllm.store.db import Database
from ownllm.store.schema import FineTuningJob
from ownllm.tuning import jobs


def _queued(db: Database, n: int, tenant: str = "t", after: int = 0) -> list[str]:
    ids = []
    with db.session() as s:
        for i in range(n):
            job_id = new_id("ftjob")
            ids.append(job_id)
            s.add(
                FineTuningJob(
                    id=job_id,
                    tenant_id=tenant,
                    model="m",
                    base_model="m",
                    training_file="file-x",
                    hyperparameters={},
                    lora={},
                    seed=0,
                    status="queued",
                    result_files=[],
                    created_at=int(time.time()) + after + i,
                    cancel_requested=False,
                    attempts=0,
                )
            )
    return ids


def test_concurrent_workers_never_claim_the_same_job(db_url):
    db = Database.open(db_url)
    ids = _queued(db, 12)
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(worker_id: str) -> None:
        while (job := jobs.claim(db, worker_id)) is not None:
            with lock:
                claimed.append((job.id, worker_id))

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in claimed) == sorted(ids)
    job = jobs.get_job(db, ids[0])
    assert job.status == "running" and job.attempts == 1 and job.worker_id.startswith("w")
    db.close()


def test_a_dead_workers_job_is_requeued_then_failed_after_max_attempts(db_url):
    db = Database.open(db_url)
    (job_id,) = _queued(db, 1)
    for attempt in (1, 2):
        assert jobs.claim(db, f"w{attempt}").id == job_id
        assert jobs.recover_stale(db, timeout_s=60, max_attempts=2) == []  # still beating
        time.sleep(0.05)
        assert jobs.recover_stale(db, timeout_s=0.01, max_attempts=2) == [job_id]
    job = jobs.get_job(db, job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert jobs.heartbeat(db, job_id, "w2") == (False, False)  # the dead worker lost it
    db.close()


def test_cancel_queued_is_immediate_and_running_is_flagged(db_url):
    db = Database.open(db_url)
    queued, running = _queued(db, 2)
    assert jobs.claim(db, "w").id == queued  # oldest first
    assert jobs.request_cancel(db, running) == "cancelled"
    assert jobs.request_cancel(db, queued) == "running"
    assert jobs.heartbeat(db, queued, "w") == (True, True)
    assert jobs.get_job(db, running).status == "cancelled"
    db.close()


def test_claims_are_fair_across_tenants(db_url):
    db = Database.open(db_url)
    a1, a2, a3 = _queued(db, 3, tenant="acme")
    (b1,) = _queued(db, 1, tenant="globex", after=3)  # queued after all of acme's
    assert jobs.claim(db, "w1").id == a1  # no one runs anything: the oldest job
    assert jobs.claim(db, "w2").id == b1  # acme runs one job, globex none
    assert jobs.claim(db, "w3").id == a2
    db.close()


def test_one_worker_takes_tenants_in_turn(db_url):
    db = Database.open(db_url)
    a1, a2 = _queued(db, 2, tenant="acme")
    (b1,) = _queued(db, 1, tenant="globex", after=2)
    order = []
    while (job := jobs.claim(db, "w")) is not None:
        order.append(job.id)
        assert jobs.set_status(db, job.id, "succeeded", worker_id="w")
    assert order == [a1, b1, a2]  # globex was never served: it goes before acme's second
    db.close()


def _ledger(db: Database) -> list[tuple]:
    from sqlalchemy import select

    from ownllm.store.schema import UsageRecord as U

    with db.session() as s:
        return s.execute(
            select(U.request_id, U.endpoint, U.status, U.trained_tokens, U.prompt_tokens)
        ).all()


def test_a_job_that_ends_after_training_writes_one_ledger_row(db_url):
    db = Database.open(db_url)
    done, cancelled, lost, untouched = _queued(db, 4)
    for worker_id in ("w1", "w2", "w3"):
        job = jobs.claim(db, worker_id)
        jobs.update_progress(db, job.id, worker_id, trained_tokens=100)
    assert jobs.set_status(db, done, "succeeded", worker_id="w1", trained_tokens=300)
    assert not jobs.set_status(db, done, "failed", worker_id="w1")  # ends once, metered once
    assert jobs.set_status(db, cancelled, "cancelled", worker_id="w2")  # what it trained so far
    time.sleep(0.05)
    assert jobs.recover_stale(db, timeout_s=0.01, max_attempts=1) == [lost]  # failed for good
    assert jobs.request_cancel(db, untouched) == "cancelled"  # never trained: no row
    rows = sorted(_ledger(db))
    assert rows == sorted(
        [
            (done, "fine_tuning.jobs", "ok", 300, 0),
            (cancelled, "fine_tuning.jobs", "cancelled", 100, 0),
            (lost, "fine_tuning.jobs", "error", 100, 0),
        ]
    )
    db.close()
