"""What the server benchmarks share: a free loopback port, and `ownllm serve` in a
subprocess timed to its first /ready.

Left out on purpose: the retries of the test suite's server (tests/server.py), which
starts again on a new port when another process took the one picked. A benchmark fails
instead, so a retry never hides inside a measured start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds_to_ready(data_dir: Path, *args: str, timeout_s: float = 600) -> float:
    """Start `ownllm serve *args` on `data_dir`; the seconds from process start until
    GET /ready answers 200. The server is stopped before this returns. No fine-tuning worker
    runs beside it, and it keeps its database in `data_dir` whatever the environment says."""
    env = {**os.environ, "OWNLLM_SERVER_RUN_WORKER": "false"}
    env.pop("OWNLLM_DATABASE_URL", None)
    port = free_port()
    log = data_dir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "ownllm",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([*cmd, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        while time.perf_counter() - start < timeout_s:
            if process.poll() is not None:
                raise SystemExit(f"ownllm serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"ownllm serve not ready after {timeout_s} s: {log.read_text()[-2000:]}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
