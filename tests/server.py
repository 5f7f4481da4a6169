"""A real `ownllm serve` subprocess on a free loopback port, for end-to-end tests, and
`serve_app`: an in-process ASGI app on a loopback socket (a scripted backend over real HTTP).

Deadlines here only bound a hang (a loaded machine may be slow, never wrong): each wait
returns as soon as its event happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_TIMEOUT_S = 120
PORT_ATTEMPTS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ownllm serve *args` in a subprocess; `wait_ready` returns once it answers /ready.

    The port is picked free but bound only after the model loads, so another process may
    take it first: the server then exits with "address already in use" and is started
    again on a new port, and /ready counts only once this process holds the listening
    socket (not some other server that got the port)."""

    def __init__(self, *args: str, data_dir: Path, env: dict | None = None) -> None:
        self.args = [*args, "--data-dir", str(data_dir)]
        self.env = {**os.environ, "OWNLLM_SERVER_RUN_WORKER": "false", **(env or {})}
        self.env.pop("OWNLLM_DATABASE_URL", None)
        self.log = open(data_dir / "server.log", "w")  # noqa: SIM115
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ownllm", "serve", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env
        )

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> httpx.Response:
        deadline = time.monotonic() + timeout
        attempts = 1
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.log_text() and attempts < PORT_ATTEMPTS:
                    attempts += 1
                    self._spawn()
                    continue
                raise AssertionError(f"server exited: {self.log_text()[-2000:]}")
            try:
                response = httpx.get(f"{self.base_url}/ready", timeout=2)
                if response.status_code == 200 and listens(self.process.pid, self.port):
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()  # a graceful stop flushes the ledger: give it time
        try:
            self.process.wait(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on loopback `port` (read from
    /proc; where there is no /proc, assume it does)."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return True
    listening = {
        f"socket:[{row.split()[9]}]"
        for row in table
        if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A"  # 0A: LISTEN
    }
    for fd in fds:
        try:
            if os.readlink(fd) in listening:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


@contextmanager
def serve_app(app, lifespan: str = "auto") -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread, on a loopback socket bound here (no port
    race); yields its base URL once it accepts connections."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=READY_TIMEOUT_S)
        sock.close()
