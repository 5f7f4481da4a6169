"""`ownllm serve`'s startup log: at info level, what an operator needs and nothing else."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ownllm.cli.serve import auth_mode
from tests.server import READY_TIMEOUT_S, Server

# One line for each thing an operator needs (model; dtype, device, threads and kernels;
# KV cache; worker; address and auth), the worker's own "ready" line, the migrations a
# new database gets and, where this machine has not built the C kernels yet, their build.
STARTUP_LINES = {
    "model": r"ownllm: model tiny: read from ",
    "database": r"ownllm\.store\.db: database sqlite:///.*: applied migrations? 0001",
    "kernel build": r"ownllm\.engine\.cpu_kernels: compiled the C kernels in ",
    "engine": (
        r"ownllm\.engine: built in [\d.]+s: dtype (float32|bfloat16), device cpu, \d+ threads, "
        r"kernels (C \((AVX-512|portable)[^)]*\)|torch)$"
    ),
    "kv cache": (
        r"ownllm\.engine: KV cache \d+ tokens \(\d+ blocks of 16, [\d.]+ MiB\), "
        r"max_model_len 512, max_num_seqs \d+; queue bounds \d+ requests, \d+ sequences, "
        r"\d+ tokens$"
    ),
    "worker": r"ownllm\.worker: fine-tuning worker started \(pid \d+\)$",
    "address": r"ownllm: listening on (?P<url>\S+), auth: open \(loopback, no API keys\)$",
    "worker ready": r"ownllm\.worker: fine-tuning worker \S+ ready for tiny$",
}
OPTIONAL = {"kernel build"}
NOISE = ("alembic", "Context impl", "Will assume", "Started server process", "Uvicorn running")


def _wait_for_line(log: Path, text: str) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S  # bounds a hang; returns on the line
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the log: {log.read_text()[-2000:]}")


def test_startup_log_says_what_an_operator_needs_and_nothing_else(tmp_path, tiny_model_dir):
    server = Server(
        "--model",
        str(tiny_model_dir),
        "--name",
        "tiny",
        data_dir=tmp_path,
        env={"OWNLLM_SERVER_RUN_WORKER": "true"},
    )
    try:
        server.wait_ready()
        # the worker process opens the database too: its lines must be as quiet
        content = _wait_for_line(tmp_path / "server.log", "ready for tiny")
    finally:
        server.stop()
    last_start = content.rfind("\n", 0, content.rindex("model tiny: read from")) + 1
    content = content[last_start:]  # the last start, if the port was taken and it retried
    info = [
        line.split(" INFO ", 1)[1]
        for line in content.splitlines()
        if " INFO " in line and " INFO uvicorn.access: " not in line  # one line per request
    ]
    found: dict[str, re.Match] = {}
    for line in info:
        kinds = [kind for kind, pattern in STARTUP_LINES.items() if re.match(pattern, line)]
        assert len(kinds) == 1, f"an info line no operator asked for: {line!r}"
        assert kinds[0] not in found, f"said twice: {line!r}"
        found[kinds[0]] = re.match(STARTUP_LINES[kinds[0]], line)
    assert set(STARTUP_LINES) - OPTIONAL <= set(found), f"missing from the log: {info}"
    assert found["address"]["url"] == server.base_url
    assert not [line for line in content.splitlines() if any(n in line for n in NOISE)]


@pytest.mark.parametrize(
    "host, admin_key, keys, expected",
    [
        ("127.0.0.1", "", [], "open (loopback, no API keys)"),
        ("127.0.0.1", "", ["ci", "revoked"], "keys (1 active API key)"),
        ("0.0.0.0", "sk-admin", [], "keys (0 active API keys, the admin key)"),
        ("0.0.0.0", "", ["a", "b"], "keys (2 active API keys)"),
    ],
)
def test_auth_mode_says_who_may_call(tmp_path, host, admin_key, keys, expected):
    from ownllm.api.state import AppState
    from ownllm.config import load_config
    from ownllm.gateway.gateway import Gateway
    from ownllm.gateway.keys import create_key, revoke_key
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database

    overrides = {"server": {"host": host}, "auth": {"admin_key": admin_key}}
    config = load_config(env={}, overrides=overrides)
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    for name in keys:
        created = create_key(db, "acme", name)
        if name == "revoked":
            revoke_key(db, created.info.id)
    state = AppState(config=config, data_dir=DataDir(tmp_path).ensure(), db=db)
    gateway = Gateway.build(config, db, backend=lambda: None)
    try:
        assert auth_mode(state, gateway.auth) == expected
    finally:
        db.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backend", "tpu=http://x"], "--backend 'tpu=http://x': expected KIND=URL"),
        (["--backend", "vllm=localhost:8000"], "needs the server's http:// or https:// base URL"),
    ],
)
def test_a_bad_backend_flag_stops_serve_with_one_line(tmp_path, capsys, flags, message):
    from ownllm.cli import main

    assert main(["serve", "--data-dir", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_unset_backend_key_stops_serve_before_the_model(tmp_path, capsys, monkeypatch):
    from ownllm.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ownllm.toml").write_text(
        '[[backends]]\nkind = "openai"\nurl = "https://api.example.com"\n'
        'api_key_env = "OWNLLM_TEST_UNSET_KEY"\n'
    )
    monkeypatch.delenv("OWNLLM_TEST_UNSET_KEY", raising=False)
    assert main(["serve", "--data-dir", str(tmp_path / "data")]) == 2
    assert "api_key_env names OWNLLM_TEST_UNSET_KEY, which is not set" in capsys.readouterr().err
    assert not (tmp_path / "data" / "models").exists()  # stopped before the model cache


def test_idle_connections_outlive_the_clients_own_idle_expiry(tmp_path, tiny_model_dir):
    """uvicorn's default keep-alive (5 s) equals httpx's idle expiry and so the openai
    client's: a client then sends a request on a connection in the instant the server closes
    it, and the request fails with httpx.ReadError (7 of 38,000 streams in a 20-minute soak).
    The server keeps idle connections longer than those clients do (`server.keep_alive_s`):
    one idle for 6 s still answers."""
    import socket

    import httpx
    import openai._constants

    from ownllm.config import ServerConfig

    default = ServerConfig().keep_alive_s
    assert default > httpx.Limits().keepalive_expiry
    assert default > openai._constants.DEFAULT_CONNECTION_LIMITS.keepalive_expiry

    def ready(sock: socket.socket) -> bytes:
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while not (b"\r\n\r\n" in received and received.rstrip().endswith(b"}")):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection: {received!r}"
            received += chunk
        return received

    server = Server("--model", str(tiny_model_dir), "--name", "tiny", data_dir=tmp_path)
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            assert ready(sock).startswith(b"HTTP/1.1 200")
            time.sleep(6)  # idle past the clients' 5 s (uvicorn's default would close it)
            assert ready(sock).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
