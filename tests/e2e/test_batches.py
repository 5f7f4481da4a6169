"""The Batch API end to end with the official `openai` client against real server processes
(`tests/e2e/batch_server.py`: the app over a ScriptedBackend): upload, create, poll, list,
download; cancel while a line runs; and a server killed with SIGKILL mid-batch whose
successor, on the same data dir, answers the rest with no line lost and none answered
twice. The mid-batch moment is an event (the held line's marker file), never a time;
deadlines only bound a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server import READY_TIMEOUT_S, free_port

DEADLINE_S = 120


class BatchServer:
    def __init__(self, data_dir: Path, tokenizer_dir: Path, name: str, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.answered = data_dir / f"answered-{name}.txt"
        self.output = open(data_dir / f"server-{name}.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "tests.e2e.batch_server", "--data-dir", str(data_dir),
               "--port", str(self.port), "--tokenizer-dir", str(tokenizer_dir),
               "--log", str(self.answered)]  # fmt: skip
        env = {**os.environ, "OWNLLM_BATCH_LEASE_S": "2", "OWNLLM_BATCH_POLL_INTERVAL_S": "0.1",
               "OWNLLM_SERVER_RUN_WORKER": "false", **env}  # fmt: skip
        env.pop("OWNLLM_DATABASE_URL", None)
        self.process = subprocess.Popen(cmd, stdout=self.output, stderr=subprocess.STDOUT, env=env)
        wait_for(self._is_ready, READY_TIMEOUT_S, "the batch server to start")

    def _is_ready(self) -> bool:
        assert self.process.poll() is None, Path(self.output.name).read_text()[-2000:]
        try:
            return httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def prompts(self) -> list[str]:
        return self.answered.read_text().splitlines() if self.answered.exists() else []

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.output.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=READY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def batch_file(*contents: str) -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny",
                "messages": [{"role": "user", "content": c}],
                "max_tokens": 3,
            },
        }  # fmt: skip
        for i, c in enumerate(contents)
    ]
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def wait_status(client, batch_id: str, statuses: tuple[str, ...]):
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in statuses and b,
        DEADLINE_S,
        f"batch {batch_id} to reach {statuses}",
    )


def output_lines(client, file_id: str) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path


@pytest.fixture
def start(data_dir, tiny_model_dir):
    servers = []

    def start_server(name: str, **env: str) -> BatchServer:
        servers.append(BatchServer(data_dir, tiny_model_dir, name, **env))
        return servers[-1]

    yield start_server
    for server in servers:
        server.stop()


def test_a_batch_with_the_official_client(start):
    server = start("a")
    with server.client() as client:
        uploaded = client.files.create(file=("in.jsonl", batch_file("one", "two")),
                                       purpose="batch")  # fmt: skip
        assert uploaded.purpose == "batch"
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "support"},
        )
        assert batch.id.startswith("batch_") and batch.status == "validating"
        done = wait_status(client, batch.id, ("completed", "failed"))
        assert done.status == "completed", done.errors
        assert done.request_counts.total == 2 and done.request_counts.completed == 2
        assert done.metadata == {"team": "support"} and done.completed_at >= done.created_at
        listed = client.batches.list(limit=10)
        assert [b.id for b in listed.data] == [batch.id]
        lines = output_lines(client, done.output_file_id)
    assert [x["custom_id"] for x in lines] == ["r0", "r1"]
    for x in lines:
        assert x["response"]["status_code"] == 200
        assert x["response"]["body"]["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "


def test_a_bad_input_file_fails_the_batch_naming_its_line(start):
    server = start("a")
    content = batch_file("fine") + b'{"custom_id": "x", "method": "POST"}\n'
    with server.client() as client:
        uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")  # fmt: skip
        failed = wait_status(client, batch.id, ("failed", "completed"))
    assert failed.status == "failed"
    (error,) = failed.errors.data
    assert (error.line, error.code, error.param) == (2, "missing_required_parameter", "url")


def test_cancel_while_a_line_runs_keeps_what_finished(start, data_dir):
    server = start("a", OWNLLM_BATCH_MAX_CONCURRENT_LINES="1")
    with server.client() as client:
        uploaded = client.files.create(file=("in.jsonl", batch_file("zero", "HOLD one", "two")),
                                       purpose="batch")  # fmt: skip
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")  # fmt: skip
        wait_for(lambda: (data_dir / "held").exists(), DEADLINE_S, "the held line")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        (data_dir / "release").touch()
        cancelled = wait_status(client, batch.id, ("cancelled",))
        assert cancelled.request_counts.completed == 2 and cancelled.cancelled_at is not None
        lines = output_lines(client, cancelled.output_file_id)
    assert [x["custom_id"] for x in lines] == ["r0", "r1"]  # r2 never ran
    assert not any("two" in p for p in server.prompts())


def test_a_server_killed_mid_batch_is_resumed_by_the_next_with_no_line_lost_or_twice(
    start, data_dir
):
    first = start("a", OWNLLM_BATCH_MAX_CONCURRENT_LINES="1")
    contents = ("zero", "one", "HOLD two", "three", "four")
    with first.client() as client:
        uploaded = client.files.create(file=("in.jsonl", batch_file(*contents)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")  # fmt: skip
        wait_for(lambda: (data_dir / "held").exists(), DEADLINE_S, "the held line")
        mid = client.batches.retrieve(batch.id)
    assert mid.status == "in_progress" and mid.request_counts.completed == 2
    first.kill()  # SIGKILL: no shutdown, the held line's lease simply stops being renewed
    (data_dir / "release").touch()  # the next server's generations do not hold
    second = start("b")
    with second.client() as client:
        done = wait_status(client, batch.id, ("completed", "failed", "expired"))
        assert done.status == "completed"
        assert done.request_counts.total == 5 and done.request_counts.completed == 5
        lines = output_lines(client, done.output_file_id)
    assert [x["custom_id"] for x in lines] == ["r0", "r1", "r2", "r3", "r4"]
    assert len({x["response"]["request_id"] for x in lines}) == 5

    def ran(server, word):
        return [p for p in server.prompts() if word in p]

    # the first server answered zero and one and died inside two; the second took over at
    # two and answered only what was left
    assert [bool(ran(first, w)) for w in ("zero", "one", "two", "three")] == [1, 1, 1, 0]
    assert [len(ran(second, w)) for w in ("zero", "one", "two", "three", "four")] == [
        0, 0, 1, 1, 1,
    ]  # fmt: skip
