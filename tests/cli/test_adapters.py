"""`ownllm adapters …` in another process than a running server: the server sees the
registration at once (listed in /v1/models with its parent), and the deletion too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.adapters.conftest import make_peft_adapter
from tests.server import Server


def adapters_cli(*args, data_dir, model=None):
    cmd = [sys.executable, "-m", "ownllm", "adapters", "--data-dir", str(data_dir), *args]
    env = {k: v for k, v in os.environ.items() if k != "OWNLLM_DATABASE_URL"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def server(tmp_path, tiny_model_dir):
    server = Server(
        "--model",
        str(tiny_model_dir),
        "--name",
        "tiny",
        data_dir=tmp_path,
        env={"OWNLLM_MODEL_DEVICE": "cpu"},
    )
    server.wait_ready()
    yield server
    server.stop()


def model_ids(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]]


def test_cli_registers_into_a_running_server(server, tmp_path, tiny_model_dir):
    one = make_peft_adapter(tiny_model_dir, tmp_path / "one", seed=1)
    two = make_peft_adapter(tiny_model_dir, tmp_path / "two", r=8, seed=2)
    base = ("--model", str(tiny_model_dir))
    for name, path in (("one", one), ("two", two)):
        result = adapters_cli("import", str(path), "--name", name, *base, data_dir=tmp_path)
        assert result.returncode == 0, result.stderr
    result = adapters_cli("compose", "one:0.5", "two", "--name", "mix", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    models = {m["id"]: m for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}
    assert models["mix"]["parent"] == "tiny" and {"one", "two"} <= set(models)

    table = adapters_cli("list", data_dir=tmp_path).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "ID", "OWNER", "SOURCE"]
    assert [line.split()[0] for line in table[1:]] == ["one", "two", "mix"]
    shown = json.loads(adapters_cli("show", "mix", data_dir=tmp_path).stdout)
    assert shown["source"] == "composed" and shown["rank"] == 12 and len(shown["parents"]) == 2

    out = tmp_path / "mix.q8_0.gguf"
    result = adapters_cli(
        "export",
        "mix",
        "--format",
        "gguf",
        "--type",
        "q8_0",
        "-o",
        str(out),
        *base,
        data_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"GGUF"

    bad = adapters_cli(
        "compose", "one", "two", "--method", "linear", "--name", "x", data_dir=tmp_path
    )
    assert bad.returncode == 1 and "use cat" in bad.stderr
    unknown = adapters_cli("delete", "nope", data_dir=tmp_path)
    assert unknown.returncode == 1 and "no adapter 'nope'" in unknown.stderr
    assert adapters_cli("delete", "mix", data_dir=tmp_path).returncode == 0
    assert "mix" not in model_ids(server)
