"""`ownllm bench capacity` and `ownllm cost --scenario` sized from what it stored: on a
fresh server the answer says it uses an assumed figure and how to measure; after a
capacity run (the tiny random model, a few short requests) it uses the measured one and
shows the light-load busy-time figure beside it."""

from __future__ import annotations

import json
import math

import pytest

from ownllm.cli import main
from ownllm.gateway.capacity import CAPACITY_FILE, cpu_flags, load
from ownllm.gateway.usage import BusySample, UsageLedger, UsageRow
from ownllm.store.db import Database

SCENARIO = "users=1000000,requests_per_user=10,input_tokens=400,output_tokens=200"
TOKENS_PER_S_AVERAGE = 1_000_000 * 10 * 600 / 86400  # the scenario's tokens per second


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def served(monkeypatch, tiny_model_dir):
    """The tiny model as the served model of every command below (OWNLLM_MODEL)."""
    monkeypatch.setenv("OWNLLM_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("OWNLLM_DTYPE", "float32")
    return tiny_model_dir


def test_fresh_server_says_the_figure_is_assumed_and_how_to_measure(tmp_path, capsys, served):
    code, out, _ = cli(capsys, "cost", "--data-dir", str(tmp_path), "--scenario", SCENARIO)
    assert code == 0
    assert "Throughput: 730 tokens/s per box, used for this answer (ASSUMED" in out
    assert "No capacity measured for this model on this server" in out
    assert "run `ownllm bench capacity`" in out
    assert "Light-load busy-time figure: none" in out
    assert f"Hardware needed: {math.ceil(TOKENS_PER_S_AVERAGE * 2 / 730):,} × cpu-small" in out
    code, out, _ = cli(
        capsys, "cost", "--data-dir", str(tmp_path), "--hardware", "h100", "--scenario", SCENARIO
    )
    assert code == 0 and "ASSUMED: the h100 preset's figure" in out
    assert "neither measured nor sourced" in out


def test_no_figure_at_all_is_an_error_naming_the_command(tmp_path, capsys, served):
    table = tmp_path / "prices.toml"
    table.write_text("[api.x]\ninput = 1.0\noutput = 2.0\n[hardware.box]\nprice_per_hour = 1.0\n")
    code, _, err = cli(
        capsys,
        "cost",
        "--data-dir",
        str(tmp_path),
        "--price-table",
        str(table),
        "--hardware",
        "box",
        "--scenario",
        SCENARIO,
    )
    assert code == 2 and "ownllm bench capacity" in err and "--throughput" in err


def test_capacity_run_is_stored_and_sizes_the_scenario(tmp_path, capsys, served):
    d = str(tmp_path)
    code, out, err = cli(
        capsys,
        "bench",
        "capacity",
        "--data-dir",
        d,
        "--requests",
        "6",
        "--concurrency",
        "3",
        "--input-tokens",
        "12",
        "--output-tokens",
        "5",
    )
    assert code == 0, err
    (run,) = load(tmp_path)
    assert (run.prompt_tokens, run.output_tokens) == (6 * 12, 6 * 5)  # every token counted
    assert run.model == served.name and run.dtype == "float32" and run.device == "cpu"
    assert run.cpu_flags == cpu_flags() and run.measured_at[:4].isdigit()
    assert run.tokens_per_s == pytest.approx((72 + 30) / run.seconds)
    assert f"Capacity: {run.tokens_per_s:,.0f} tokens/s per box" in out
    assert str(tmp_path / CAPACITY_FILE) in out

    # light traffic in the ledger: 906 tokens in 36 engine-busy seconds
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    ledger = UsageLedger(db)
    ledger.record(
        UsageRow(
            request_id="r",
            tenant_id="acme",
            key_id="k",
            endpoint="chat.completions",
            model=served.name,
            status="ok",
            prompt_tokens=600,
            completion_tokens=306,
        )
    )
    ledger.record(BusySample("host", 36.0))
    ledger.close()
    db.close()

    code, out, _ = cli(capsys, "cost", "--data-dir", d, "--scenario", SCENARIO)
    assert code == 0
    assert (
        f"Throughput: {run.tokens_per_s:,.0f} tokens/s per box, used for this answer "
        f"(measured saturated by `ownllm bench capacity` on {run.date}" in out
    )
    assert "Not used: 25 tokens/s (light-load busy time: 906 tokens in 36" in out
    assert "Not used: 730 tokens/s (ASSUMED" in out
    assert "No capacity measured" not in out
    # measured at 12 in + 5 out, the scenario is 400 + 200: close enough, no hint
    boxes = max(1, math.ceil(TOKENS_PER_S_AVERAGE * 2 / run.tokens_per_s))
    assert f"Hardware needed: {boxes:,} × cpu-small" in out
    code, out, _ = cli(capsys, "cost", "--data-dir", d, "--json", "--scenario", SCENARIO)
    body = json.loads(out)
    assert body["boxes"] == boxes
    assert [f["kind"] for f in body["throughput_figures"]] == ["capacity", "assumed", "busy-time"]
    # a scenario with another mix is told how to measure its own
    code, out, _ = cli(
        capsys,
        "cost",
        "--data-dir",
        d,
        "--scenario",
        "users=10,requests_per_user=1,input_tokens=2000,output_tokens=20",
    )
    assert "ownllm bench capacity --input-tokens 2000 --output-tokens 20" in out


def test_capacity_refuses_what_cannot_fit(tmp_path, capsys, served):
    code, _, err = cli(
        capsys, "bench", "capacity", "--data-dir", str(tmp_path), "--input-tokens", "0"
    )
    assert code == 2 and "--input-tokens" in err
    code, _, err = cli(
        capsys,
        "bench",
        "capacity",
        "--data-dir",
        str(tmp_path),
        "--input-tokens",
        "100000",
        "--output-tokens",
        "10",
    )
    assert code == 2 and "do not fit the model's context" in err
    assert load(tmp_path) == []
