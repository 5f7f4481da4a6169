"""A bounded schemathesis run over the whole /openapi.json: no request makes a 5xx.

Schemathesis (the CLI, `schemathesis run`) sends schema-derived requests — boundary values
from the coverage phase, then property-based fuzzing — to a real server whose context is
short, so generation stays quick. Only the `not_a_server_error` check runs: 4xx answers
to nonsense are right; a 5xx is a bug.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_KEY

MAX_EXAMPLES = 10
SEED = 4


# Schemathesis's own coverage generator fails on this operation's schema (its error, not
# a server response); the fuzzing phase still covers it.
NO_COVERAGE = ["/v1/adapters/compose"]


def schemathesis_run(base_url: str, report_dir: Path, *args: str) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    command = str(cli) if cli.exists() else shutil.which("schemathesis")
    if command is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    done = subprocess.run(
        [
            command, "run", f"{base_url}/openapi.json",
            "-H", f"Authorization: Bearer {ADMIN_KEY}",
            "--checks", "not_a_server_error",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED),
            "--workers", "2",
            "--request-timeout", "120",
            "--suppress-health-check", "all",
            "--report-dir", str(report_dir),
            *args,
        ],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, _without_warnings(done.stdout)[-8000:] + done.stderr[-2000:]
    assert " generated, " in done.stdout and " failed" not in done.stdout.split("SUMMARY")[-1]


def _without_warnings(text: str) -> str:
    """The report less its WARNINGS section (missing links, 404s: long, and not failures),
    so a failure message keeps the ERRORS and FAILURES sections and the summary."""
    start, end = text.find("= WARNINGS ="), text.find("= SUMMARY =")
    if start < 0 or end < start:
        return text
    return text[: text.rfind("\n", 0, start) + 1] + text[text.rfind("\n", 0, end) + 1 :]


@pytest.mark.slow
def test_fuzzing_makes_no_server_error(fuzz_server, tmp_path):
    schemathesis_run(fuzz_server.base_url, tmp_path, "--phases", "examples,fuzzing")


@pytest.mark.slow
def test_boundary_values_make_no_server_error(fuzz_server, tmp_path):
    excluded = [arg for path in NO_COVERAGE for arg in ("--exclude-path", path)]
    schemathesis_run(fuzz_server.base_url, tmp_path, "--phases", "coverage", *excluded)
