"""`ownllm chat` as a subprocess against a running server (scripted backend, real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ownllm.api.app import create_app
from tests.server import free_port, serve_app

ANSWER = "Hello there, friend!"


@pytest.fixture
def server(fake_state):
    with serve_app(create_app(fake_state, start_engine=False), lifespan="off") as url:
        yield f"{url}/v1", fake_state.backend


def chat(*args: str, stdin: str | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OWNLLM_API_KEY": ""}
    return subprocess.run(
        [sys.executable, "-m", "ownllm", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        **kw,
    )


def test_one_shot_prints_the_streamed_answer(server):
    base_url, backend = server
    done = chat("--base-url", base_url, "-p", "Hi", "--max-tokens", "5", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ANSWER + "\n"
    request = backend.requests[0]
    assert request.sampling.seed == 3 and request.sampling.max_tokens == 5


def test_piped_turns_keep_history_and_commands_work(server, fake_state):
    base_url, backend = server
    script = "Hi\nHow are you?\n/model nope\n/reset\nAgain\n/exit\nnever sent\n"
    done = chat("--base-url", base_url, "--max-tokens", "5", "--system", "Be brief.", stdin=script)
    assert done.returncode == 0
    assert done.stdout.splitlines() == [ANSWER, ANSWER, "(conversation cleared)", ANSWER]
    assert "The model 'nope' does not exist" in done.stderr
    tok = fake_state.tokenizer
    second = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "How are you?"},
    ]
    assert backend.requests[1].prompt_token_ids == tok.encode_chat(second)
    after_reset = [second[0], {"role": "user", "content": "Again"}]
    assert backend.requests[2].prompt_token_ids == tok.encode_chat(after_reset)
    assert len(backend.requests) == 3


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_ctrl_c_stops_the_answer_not_the_program(server, sigint):
    base_url, backend = server
    backend.gate = threading.Semaphore(0)  # "Hello", then the answer waits: only Ctrl-C ends it
    # A script's background job starts with SIGINT ignored (and CI may run the suite as one).
    disposition = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL
    process = subprocess.Popen(
        [sys.executable, "-m", "ownllm", "chat", "--base-url", base_url, "--max-tokens", "200"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )
    process.stdin.write("Tell me a long story\n")
    process.stdin.flush()
    assert process.stdout.read(5) == "Hello"  # the answer is streaming
    process.send_signal(signal.SIGINT)
    out, err = process.communicate("/model\n", timeout=120)  # bounds a hang only
    assert process.returncode == 0, err
    assert " [stopped]\n(chatting with tiny)\n" in out
    deadline = time.monotonic() + 120  # the server notices the closed connection
    while backend.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.requests[0].request_id in backend.aborted


def test_unreachable_server_is_one_line_error():
    done = chat("--base-url", f"http://127.0.0.1:{free_port()}/v1", "-p", "Hi")
    assert done.returncode == 1
    assert done.stderr.startswith("ownllm: error: cannot reach ownllm at")
    assert "Traceback" not in done.stderr
