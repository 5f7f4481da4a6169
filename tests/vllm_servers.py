"""Real vLLM servers (its CPU build) on loopback, for tests anywhere (the `vllm_server`
fixture in tests/conftest.py hands out a session's `VllmServers`).

Each server is vLLM's OpenAI-compatible server serving the shipped SmolLM2 from the HF
directory ownllm's model cache makes, with LoRA enabled and runtime adapter loading allowed,
run through the vllm backend's own `VllmProcess` (its own process group, its output in a log
file). `start("a", "b")` spawns every server not yet running at once and then waits for all
of them (vLLM takes a minute or more to start on a loaded box: two in parallel cost about
one). Each server's engine runs on its own cores (`VLLM_CPU_OMP_THREADS_BIND`, by
`core_slices`): left to vLLM's automatic binding every server on one box binds its engine to
the same first core and reserves the rest, and two engines sharing it starve each other
(minute-long stalls, health checks timing out). `VllmServer.kill()` is `kill -9` of the
server and its engine process; `restart()` brings it back on the same port.

vLLM lives in its own virtualenv (`make vllm-venv`): `OWNLLM_VLLM_PYTHON`, else
`<repo>/.venv-vllm/bin/python`. Without it `start` skips the test, saying so; CI has it
(.ci/run). `OWNLLM_TEST_VLLM_URL` names a server already running (the same model, LoRA
enabled) to use as server "a" instead, while working on these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from ownllm.backends.vllm import VllmProcess, vllm_command
from tests.server import free_port

REPO = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2-135m-instruct"
MAX_LORA_RANK = 32
MAX_MODEL_LEN = 2048
START_TIMEOUT_S = 600.0  # bounds a hang: a loaded CI box takes a minute or two


SERVER_NAMES = ("a", "b")  # the servers a session may start, in the order they get cores


def vllm_python() -> Path:
    return Path(os.environ.get("OWNLLM_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")


def core_slices(cpus: list[int], num_servers: int = len(SERVER_NAMES)) -> list[str]:
    """VLLM_CPU_OMP_THREADS_BIND for each server: `cpus` split into `num_servers` contiguous
    slices (`"0"`, `"1"` on two cores; `"0,1"`, `"2,3"` on four). With fewer cores than
    servers every server gets all of them."""
    cpus = sorted(cpus)
    if len(cpus) < num_servers:
        return [",".join(map(str, cpus))] * num_servers
    size = len(cpus) // num_servers
    return [",".join(map(str, cpus[i * size : (i + 1) * size])) for i in range(num_servers)]


@dataclass
class VllmServer:
    name: str
    url: str
    process: VllmProcess
    model_dir: Path
    is_external: bool = False

    def kill(self) -> None:
        """`kill -9` of the server's whole process group (its API and engine processes)."""
        assert not self.is_external, "an external server is not this test's to kill"
        popen = self.process.popen
        assert popen is not None and popen.poll() is None, f"vLLM {self.name} is not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()

    def restart(self) -> None:
        """Start it again on the same port; returns once it answers /health."""
        asyncio.run(self.process.start())  # spawns: the old process has exited


class VllmServers:
    """The vLLM servers of one session (or module), by name; `stop()` ends them all."""

    def __init__(self, model_dir: Path, log_root: Path) -> None:
        self.model_dir = model_dir
        self.log_root = log_root
        self.servers: dict[str, VllmServer] = {}

    def __call__(self, name: str = "a") -> VllmServer:
        return self.start(name)[0]

    def start(self, *names: str) -> list[VllmServer]:
        """The servers of `names`, those not running yet spawned at once, then awaited."""
        fresh = []
        for name in names or ("a",):
            if name in self.servers:
                continue
            external = os.environ.get("OWNLLM_TEST_VLLM_URL")
            if external and name == "a":  # already running (the same model), kept running
                process = VllmProcess([], external, Path(os.devnull))
                self.servers[name] = VllmServer(
                    name, process.url, process, self.model_dir, is_external=True
                )
                continue
            python = vllm_python()
            if not python.exists():
                pytest.skip(f"vLLM's CPU build is not installed at {python} (make vllm-venv)")
            port = free_port()
            argv = vllm_command(
                str(python),
                model_dir=str(self.model_dir),
                served_name=SERVED_NAME,
                port=port,
                max_loras=2,
                max_lora_rank=MAX_LORA_RANK,
                max_model_len=MAX_MODEL_LEN,
                dtype="bfloat16",
            )
            log = self.log_root / f"vllm-{name}.log"
            url = f"http://127.0.0.1:{port}"
            cores = core_slices(sorted(os.sched_getaffinity(0)))[SERVER_NAMES.index(name)]
            process = VllmProcess(argv, url, log, start_timeout_s=START_TIMEOUT_S,
                                  env={"VLLM_CPU_OMP_THREADS_BIND": cores})  # fmt: skip
            process.spawn()
            self.servers[name] = VllmServer(name, process.url, process, self.model_dir)
            fresh.append(process)
        if fresh:  # raises, with the log's end, if one cannot start

            async def wait_all() -> None:
                await asyncio.gather(*(p.start() for p in fresh))

            asyncio.run(wait_all())
        return [self.servers[name] for name in names or ("a",)]

    def stop(self) -> None:
        for server in self.servers.values():
            server.process.stop()
        self.servers.clear()


__all__ = ["MAX_LORA_RANK", "SERVED_NAME", "VllmServer", "VllmServers", "vllm_python"]
