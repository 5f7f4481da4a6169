import os
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


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("policy.toml", b'[[rules]]\nid = "no-pii"\ndetector = "email"\naction = "drop"\n',
         "rules[0] (id 'no-pii'): action = 'drop': must be one of block, redact, flag"),
        ("policy.toml", b'[[rules]]\nid = "a"\ndetector = "email"\naction = "flag"\n'
         b"[tenants.t]\ndisable = 5\n", "tenant 't': disable = 5: must be a list of rule ids"),
        ("policy.yaml", b"rules: [\n", "is not valid YAML"),
        ("policy.toml", b"\xff\xfe", "cannot be read"),
    ],
)  # fmt: skip
def test_serve_bad_policy_file_exits_nonzero_with_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    env = {**os.environ, "OWNLLM_GUARD_POLICY_FILE": str(tmp_path / name)}
    result = run_cli("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
