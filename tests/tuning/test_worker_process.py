"""`ownllm worker` processes: kill -9 mid-job, then another worker resumes it from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from ownllm.formats.peft import read_adapter
from ownllm.store.schema import Adapter, JobEvent
from ownllm.tuning import jobs
from tests.api.test_fine_tuning import PIRATE, upload
from tests.tuning.app_state import client_for, make_state


def start_worker(model_dir, data_dir, db_url, name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "OWNLLM_DATABASE_URL": db_url,
        "OWNLLM_TUNING_POLL_INTERVAL_S": "0.2",
        "OWNLLM_TUNING_HEARTBEAT_TIMEOUT_S": "2",
    }
    cmd = [
        sys.executable,
        "-m",
        "ownllm",
        "worker",
        "--model",
        str(model_dir),
        "--name",
        "tiny",
        "--data-dir",
        str(data_dir),
    ]
    log = open(data_dir / f"{name}.log", "w")  # noqa: SIM115 (kept by the child)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float = 120.0, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("timed out")


def stopped_with_checkpoint(worker: subprocess.Popen, db, job_id: str):
    """Stop `worker` (SIGSTOP), then look: its job's latest checkpoint, the worker left
    stopped; or None, the worker let go on. What is seen stays true until the kill."""
    os.kill(worker.pid, signal.SIGSTOP)
    checkpoint = jobs.latest_checkpoint(db, job_id)
    if checkpoint is None:
        os.kill(worker.pid, signal.SIGCONT)
    return checkpoint


def messages(db, job_id) -> list[str]:
    with db.session() as s:
        return list(
            s.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            )
        )


def assert_registry_sound(state) -> list[str]:
    """Every registered adapter's files are complete and load as a PEFT adapter."""
    with state.db.session() as s:
        rows = list(s.scalars(select(Adapter)))
    for row in rows:
        read_adapter(state.data_dir.resolve(row.path))
    return [row.name for row in rows]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_kill_9_mid_job_then_another_worker_resumes_from_the_checkpoint(
    tmp_path, learnable_model_dir, db_url
):
    state = make_state(tmp_path, learnable_model_dir, db_url)
    async with client_for(state) as client:
        train = await upload(client, PIRATE)
        r = await client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "tiny",
                "training_file": train,
                "seed": 1,
                "hyperparameters": {"n_epochs": 4, "batch_size": 1},
            },
        )
        job_id = r.json()["id"]
    first = start_worker(learnable_model_dir, tmp_path, db_url, "first")
    try:
        # it runs 10 ms at a time between looks: far too little for the 36 steps after the
        # first checkpoint, however fast the machine
        wait_for(lambda: stopped_with_checkpoint(first, state.db, job_id), poll_s=0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    job = jobs.get_job(state.db, job_id)
    assert job.status == "running"  # its worker is gone mid-job
    killed_at = jobs.latest_checkpoint(state.db, job_id).step
    names = assert_registry_sound(state)
    assert f"ft:tiny:@admin::{job_id}" not in names

    second = start_worker(learnable_model_dir, tmp_path, db_url, "second")
    try:
        wait_for(lambda: jobs.get_job(state.db, job_id).status in jobs.FINAL, timeout=300)
    finally:
        second.terminate()
        second.wait()
    job = jobs.get_job(state.db, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    log = messages(state.db, job_id)
    assert "Worker lost; job requeued to resume from its last checkpoint." in log
    resumed = [m for m in log if m.startswith("Resuming from step ")]
    assert resumed and int(resumed[0].split()[-1].rstrip(".")) >= killed_at
    assert job.fine_tuned_model in assert_registry_sound(state)
    state.db.close()
