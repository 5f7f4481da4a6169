"""Real vLLM servers (its CPU build) for the vllm backend's and the router's tests.

`vllm_server(name)` starts (once per test session, whoever asks first) a vLLM
OpenAI-compatible server on a free loopback port, serving the shipped SmolLM2 from the
HF directory ownllm's model cache makes, with LoRA enabled and runtime adapter loading
allowed, through the backend's own `VllmProcess`; every server stops at the end of the
session. Two names give two servers (the router's tests). vLLM lives in its own
virtualenv (`make vllm-venv`): `OWNLLM_VLLM_PYTHON`, else `<repo>/.venv-vllm/bin/python`.
Without it the tests that need a server skip, saying so; CI has it (.ci/run).
`OWNLLM_TEST_VLLM_URL` names a server already running (the same model, LoRA enabled) to
use as the first one instead, while working on these tests.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from ownllm.backends.vllm import VllmProcess, vllm_command
from tests.server import free_port

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "smollm2-135m-instruct"
MAX_LORA_RANK = 32
START_TIMEOUT_S = 600.0  # bounds a hang: a loaded CI box takes a minute or two


def vllm_python() -> Path:
    return Path(os.environ.get("OWNLLM_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")


@dataclass
class VllmServer:
    name: str
    url: str
    process: VllmProcess
    model_dir: Path


@pytest.fixture(scope="session")
def shipped_model_dir(tmp_path_factory) -> Path:
    """The shipped model as the HF directory ownllm's cache writes (what vLLM loads)."""
    from ownllm.models import prepare_model, resolve_model

    return prepare_model(resolve_model(SERVED_NAME), tmp_path_factory.mktemp("vllm-home")).path


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, shipped_model_dir):
    """`start(name="a") -> VllmServer`: the session's vLLM server of that name."""
    python = vllm_python()
    servers: dict[str, VllmServer] = {}

    def start(name: str = "a") -> VllmServer:
        if name in servers:
            return servers[name]
        external = os.environ.get("OWNLLM_TEST_VLLM_URL")
        if external and name == "a":  # a server already running (same model), kept running
            process = VllmProcess([], external, Path(os.devnull))
            servers[name] = VllmServer(name, process.url, process, shipped_model_dir)
            return servers[name]
        if not python.exists():
            pytest.skip(f"vLLM's CPU build is not installed at {python} (make vllm-venv)")
        port = free_port()
        argv = vllm_command(
            str(python),
            model_dir=str(shipped_model_dir),
            served_name=SERVED_NAME,
            port=port,
            max_loras=2,
            max_lora_rank=MAX_LORA_RANK,
            max_model_len=2048,
            dtype="bfloat16",
        )
        log = tmp_path_factory.mktemp(f"vllm-{name}") / "vllm.log"
        process = VllmProcess(
            argv, f"http://127.0.0.1:{port}", log, start_timeout_s=START_TIMEOUT_S
        )
        asyncio.run(process.start())  # raises, with the log's end, if it cannot start
        servers[name] = VllmServer(name, process.url, process, shipped_model_dir)
        return servers[name]

    yield start
    for server in servers.values():
        server.process.stop()
