"""One fine-tuning job on several torch.distributed ranks, launched by the worker that claimed it.

The worker claims the job once (the queue is unchanged), then starts `nproc`
rank processes with `torch.multiprocessing` (spawn) that meet at a loopback
TCP address and form a gloo process group. Each rank loads the base and the
data, trains its shard of every step (`ownllm.tuning.parallel`) and all-reduces
the gradients; rank 0 owns the job's heartbeat, events, checkpoints and the
adapter, exactly as a one-process worker does. The claiming worker beats too
while the ranks start, and waits.

Losing any rank ends the attempt: the others are stopped, and the job goes
back to the queue to resume from its last checkpoint (which any number of
ranks can load: every rank holds the same state), or fails after
`max_attempts`. A worker told to stop forwards SIGTERM to its ranks, which
agree to stop at the next step; rank 0 hands the job back.

Left out: ranks on several hosts (torchrun's rendezvous would give the address
and ranks instead), NCCL: the training forward runs on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ownllm.worker")


@dataclass(frozen=True)
class RankSpec:
    """What a rank process needs to rebuild the worker (picklable across spawn)."""

    database_url: str
    data_dir: str
    base: object  # ownllm.tuning.worker.BaseModel
    config: object  # TuningConfig
    worker_id: str
    job_id: str
    world_size: int
    address: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, spec: RankSpec) -> None:
    """A rank process: join the group, train the job's shard, leave."""
    import torch

    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database
    from ownllm.tuning import jobs
    from ownllm.tuning.parallel import init_group, leave_group
    from ownllm.tuning.worker import Worker

    if not spec.config.threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world_size))
    db = Database.open(spec.database_url, migrate=False)  # the claiming worker's schema
    worker = Worker(db, DataDir(Path(spec.data_dir)), spec.base, spec.config, spec.worker_id)

    def on_signal(_signum, _frame) -> None:
        worker.stop_current()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parallel = init_group(rank, spec.world_size, spec.address)
    try:
        worker.run_job(jobs.get_job(db, spec.job_id), parallel)
    finally:
        leave_group()
        db.close()


class Ranks:
    """The running rank processes of one job."""

    def __init__(self, worker, job) -> None:
        import torch.multiprocessing as mp

        spec = RankSpec(
            database_url=worker.db.engine.url.render_as_string(hide_password=False),
            data_dir=str(worker.data_dir.root),
            base=worker.base,
            config=worker.config,
            worker_id=worker.worker_id,
            job_id=job.id,
            world_size=worker.nproc,
            address=f"tcp://127.0.0.1:{_free_port()}",
        )
        self.context = mp.start_processes(
            rank_main, args=(spec,), nprocs=worker.nproc, join=False, start_method="spawn"
        )

    @property
    def pids(self) -> list[int]:
        return list(self.context.pids())

    def stop(self) -> None:
        """Ask every rank to stop at the next step (the job is handed back by rank 0)."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def wait(self) -> str | None:
        """Block until every rank has ended; None when all ended well, else what went wrong
        (the other ranks are terminated by then)."""
        from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

        try:
            while not self.context.join(timeout=0.5):
                pass
        except ProcessExitedException as e:
            return f"Training rank {e.error_index} was lost (exit code {e.exit_code})"
        except ProcessRaisedException as e:
            last = str(e).strip().splitlines()[-1] if str(e).strip() else "an error"
            return f"Training rank {e.error_index} failed ({last})"
        return None


def run_ranks(worker, job) -> None:
    """Train `job` (claimed by `worker`) on `worker.nproc` ranks; requeue it if one is lost."""
    from ownllm.tuning import jobs
    from ownllm.tuning.worker import Heartbeat

    beat = Heartbeat(worker.db, job.id, worker.worker_id, worker.heartbeat_interval)
    beat.start()
    try:
        worker._ranks = Ranks(worker, job)
        trouble = worker._ranks.wait()
    finally:
        worker._ranks = None
        beat.done.set()
    if trouble:
        log.warning("job %s: %s", job.id, trouble)
        jobs.requeue_attempt(
            worker.db, job.id, worker.worker_id, worker.config.max_attempts, trouble
        )
