"""One gateway in front of two ownllm replicas on loopback (the openai backend, dialect
ownllm), each a separate process over a ScriptedBackend, and a third standing in for a paid
API (`remote = true`): requests spread; `kill -9` of one replica while streams run: its
streams end with an error event, every request that had not started is served by the
other, /ready shows it down, and traffic returns when it comes back. The remote gets
nothing but what the hybrid policy allows. Waits poll for an event with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from ownllm.api.app import create_app
from ownllm.api.state import AppState
from ownllm.config import load_config
from ownllm.models.tokenizer import Tokenizer
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import UsageRecord
from tests.server import free_port, serve_app

DEADLINE_S = 60.0
MESSAGES = [{"role": "user", "content": "Count."}]


class Replica:
    """A fleet replica process (tests/fleet_replica.py) on a fixed port."""

    def __init__(self, name: str, model_dir: Path, data_dir: Path) -> None:
        self.name, self.model_dir, self.data_dir = name, model_dir, data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def spawn(self) -> None:
        cmd = [sys.executable, "-m", "tests.fleet_replica", "--port", str(self.port),
               "--model-dir", str(self.model_dir), "--data-dir", str(self.data_dir)]  # fmt: skip
        self.process = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.getcwd()})

    def wait_started(self) -> None:
        wait_for(self._started, f"{self.name} to start")

    def start(self) -> None:
        self.spawn()
        self.wait_started()

    def _started(self) -> bool:
        assert self.process.poll() is None, f"{self.name} exited with {self.process.returncode}"
        return _answers(self.url + "/health")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def replica_states(url: str) -> dict[str, str]:
    return {r["name"]: r["state"] for r in httpx.get(url + "/ready", timeout=5).json()["replicas"]}


def routed(url: str, replica: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(f'ownllm_routed_requests_total{{replica="{replica}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def fleet(tmp_path, tiny_model_dir):
    replicas = {n: Replica(n, tiny_model_dir, tmp_path / n) for n in ("cpu-0", "cpu-1", "paid")}
    try:
        for r in replicas.values():
            r.data_dir.mkdir()
            r.spawn()  # all at once: each takes seconds to import
        for r in replicas.values():
            r.wait_started()
        backends = [
            {"name": n, "kind": "openai", "url": r.url, "dialect": "ownllm", "remote": n == "paid"}
            for n, r in replicas.items()
        ]
        overrides = {
            "store": {"data_dir": str(tmp_path / "gateway")},
            "model": {"name": "tiny"},
            "backends": backends,
            "routing": {"strategy": "round_robin", "health_interval_s": 0.1, "cooldown_s": 0.2},
        }
        config = load_config(env={}, overrides=overrides)
        state = AppState(config, DataDir(tmp_path / "gateway").ensure(),
                         db=Database.open(config.store.url),
                         tokenizer=Tokenizer.from_dir(tiny_model_dir))  # fmt: skip
        app = create_app(state)
        with serve_app(app) as url:
            yield url, replicas, app
    finally:
        for r in replicas.values():
            r.stop()


def test_kill_9_of_a_replica_under_load(fleet):
    url, replicas, app = fleet
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    for _ in range(4):
        answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
        assert answer.choices[0].message.content == "tok0 tok1 tok2 "
    assert routed(url, "cpu-0") == routed(url, "cpu-1") == 2  # spread
    assert routed(url, "paid") == 0  # local_only: the default policy

    # four streams, two on each replica, each past its first token
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 150, "stream": True}
    with httpx.Client(timeout=DEADLINE_S) as http:
        streams = [http.stream("POST", url + "/v1/chat/completions", json=body) for _ in range(4)]
        responses = [s.__enter__() for s in streams]
        lines = [r.iter_lines() for r in responses]
        for it in lines:
            assert next(line for line in it if line.startswith("data: {"))  # began
        replicas["cpu-0"].kill()
        ends = []
        for it in lines:
            events = [json.loads(x[6:]) for x in it if x.startswith("data: {")]
            ends.append("error" if events and "error" in events[-1] else "done")
        for s in streams:
            s.__exit__(None, None, None)
    assert sorted(ends) == ["done", "done", "error", "error"]  # no silent truncation
    app.state.gateway.ledger.flush()
    with app.state.ownllm.db.session() as session:
        rows = session.scalars(select(UsageRecord).where(UsageRecord.status == "error")).all()
    assert [(r.http_status, r.error_code) for r in rows] == [(502, "replica_failed")] * 2

    # nothing that had not started is lost: cpu-1 answers every one
    for _ in range(6):
        answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
        assert answer.choices[0].message.content == "tok0 tok1 "
    wait_for(lambda: replica_states(url)["cpu-0"] == "down", "/ready to show cpu-0 down")
    assert httpx.get(url + "/ready").status_code == 200  # cpu-1 still serves
    assert routed(url, "paid") == 0  # a retry never leaves the premises

    replicas["cpu-0"].start()  # back, on the same port
    wait_for(lambda: replica_states(url)["cpu-0"] == "healthy", "cpu-0 to be healthy again")
    before = routed(url, "cpu-0")
    for _ in range(4):
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert routed(url, "cpu-0") > before  # traffic returns
