"""`ownllm tune` and `ownllm jobs` against a real server with its background worker."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.server import Server
from tests.tuning.test_openai_flow import WORKER_ENV


def ownllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ownllm", *args], capture_output=True, text=True, timeout=600
    )


def test_tune_prints_the_model_and_jobs_shows_it(tmp_path, learnable_model_dir, reply_file):
    server = Server(
        "--model", str(learnable_model_dir), "--name", "tiny", data_dir=tmp_path, env=WORKER_ENV
    )
    try:
        server.wait_ready()
        url = ["--base-url", f"{server.base_url}/v1"]
        out = ownllm(
            "tune", str(reply_file), "--suffix", "cli", "--epochs", "1", "--seed", "1", *url
        )
        assert out.returncode == 0, out.stderr
        model = out.stdout.strip()
        assert model.startswith("ft:tiny:@admin:cli:ftjob-")
        assert "step 10/10 loss" in out.stderr  # 20 examples, auto batch size 2
        job_id = model.rsplit(":", 1)[1]
        listed = ownllm("jobs", "list", *url)
        assert job_id in listed.stdout and "succeeded" in listed.stdout
        shown = json.loads(ownllm("jobs", "show", job_id, "--json", *url).stdout)
        assert shown["fine_tuned_model"] == model and shown["hyperparameters"]["n_epochs"] == 1
        events = ownllm("jobs", "events", job_id, *url).stdout
        assert "Step 1/10: training loss=" in events and "successfully completed" in events
        cancelled = ownllm("jobs", "cancel", job_id, *url)
        assert cancelled.returncode == 1 and "already succeeded" in cancelled.stderr
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{nope\n" * 12)
        failed = ownllm("tune", str(bad), *url)
        assert failed.returncode == 1 and "line 1: invalid JSON" in failed.stderr
    finally:
        server.stop()
