import subprocess
import sys

import pytest


def run_cli(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "ownllm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_help_imports_no_heavy_module():
    code = (
        "import sys\nfrom ownllm.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'fastapi', 'sqlalchemy', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "serve" in out and "HEAVY []" in out


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("ownllm ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "server.port = 70000"),
        (["--dtype", "int3"], "model.dtype = 'int3'"),
        (["--model", "/does/not/exist"], "model '/does/not/exist' not found"),
    ],
)
def test_serve_bad_config_exits_nonzero_with_one_line(tmp_path, args, message):
    result = run_cli("serve", "--data-dir", str(tmp_path), *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
