"""`ownllm serve`'s background worker: one `ownllm worker` child process.

A separate process rather than a thread: training saturates the CPU and
holds the GIL in Python glue, and a process can be stopped (or die) without
touching the server. The child gets the server's prepared model directory,
data dir and database URL; on shutdown it receives SIGTERM, stops between
micro-batches and hands its job back to the queue (resumed later from its
last checkpoint).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger("ownllm.worker")


def worker_command(state) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ownllm",
        "worker",
        "--model",
        str(state.model.path),
        "--name",
        state.model.id,
        "--base-sha256",
        state.model.weights_sha256,
        "--data-dir",
        str(state.config.store.home),
    ]


def start_worker_process(state) -> subprocess.Popen:
    env = dict(os.environ, OWNLLM_DATABASE_URL=state.config.store.url)
    proc = subprocess.Popen(worker_command(state), env=env)
    log.info("fine-tuning worker started (pid %d)", proc.pid)
    return proc


def stop_worker_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
