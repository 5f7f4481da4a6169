"""A real `ownllm serve` subprocess on a free loopback port, for end-to-end tests."""

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


class Server:
    def __init__(self, *args: str, data_dir: Path, env: dict | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ownllm", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(data_dir), *args]
        full_env = {**os.environ, "OWNLLM_SERVER_RUN_WORKER": "false", **(env or {})}
        full_env.pop("OWNLLM_DATABASE_URL", None)
        self.log = open(data_dir / "server.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env
        )

    def wait_ready(self, timeout: float = 120) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                response = httpx.get(f"{self.base_url}/ready", timeout=2)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
