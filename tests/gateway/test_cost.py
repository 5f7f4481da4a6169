"""The cost account and the scenario projection: arithmetic a CFO can check by hand."""

from __future__ import annotations

import pytest

from ownllm.backends.base import EngineStats
from ownllm.config import load_config
from ownllm.gateway.cost import (
    CostError,
    Hardware,
    Traffic,
    account,
    hardware_from_config,
    load_price_table,
    observed_traffic,
    parse_scenario,
    project,
    unconfirmed_sources,
)
from ownllm.gateway.usage import BusySample, UsageLedger, UsageRow
from ownllm.store.db import Database


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        'as_of = "2025-10-20"\n'
        '[api.cheap]\ninput = 0.1\noutput = 0.4\nsource = "https://x"\n'
        '[api.dear]\ninput = 2.0\noutput = 8.0\nsource = "https://y"\n'
        '[hardware.box]\nprice_per_hour = 1.0\nsource = "https://z"\n'
    )
    return load_price_table(path)


def test_shipped_table_is_dated_and_sourced():
    shipped = load_price_table()
    names = {a.name for a in shipped.apis}
    assert {"gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4.5", "gemini-2.5-flash"} <= names
    assert all(a.source.startswith("https://") and a.as_of for a in shipped.apis)
    assert {"cpu-small", "h100"} <= set(shipped.hardware)
    assert all(h.source.startswith("https://") for h in shipped.hardware.values())


def test_account_by_hand(table):
    # 10 h window, 1 box at $1/h = $10. 3M input + 1M output tokens. Busy 1 h.
    traffic = Traffic(3_000_000, 1_000_000, 100, window_s=36_000, busy_s=3_600)
    acc = account(traffic, Hardware("box", 1.0), table)
    assert acc.hardware_cost == pytest.approx(10.0)
    assert acc.cost_per_million == pytest.approx(2.5)  # $10 / 4M
    assert acc.utilisation == pytest.approx(0.1)
    assert acc.traffic.throughput_tps == pytest.approx(4_000_000 / 3600)
    assert acc.cost_per_million_at_full == pytest.approx(0.25)  # $1/h / 4M per hour
    cheap, dear = acc.comparisons
    assert cheap.api_cost == pytest.approx(0.3 + 0.4) and cheap.savings == pytest.approx(-9.3)
    assert dear.api_cost == pytest.approx(6.0 + 8.0) and dear.savings == pytest.approx(4.0)
    # break-even: $730/month ÷ blended (0.75·2 + 0.25·8)/1M = 3.5/1M per token
    assert dear.break_even_tokens_per_month == pytest.approx(730 / 3.5e-6)
    assert dear.is_reachable  # capacity 4M/h · 730 h = 2.92B ≥ 208.6M
    assert not cheap.is_reachable  # 730 / 0.175e-6 = 4.17B > 2.92B


def test_projection_by_hand(table):
    scenario = parse_scenario(
        "users=1_000_000,requests_per_user=10,input_tokens=400,output_tokens=200"
    )
    p = project(
        scenario, Hardware("box", 1.0), table, throughput_tps=10_000, throughput_source="given"
    )
    # 6e9 tokens/day = 69,444 tokens/s average; ×2 peak / 10k per box → 14 boxes
    assert p.boxes == 14
    assert p.self_per_day == pytest.approx(14 * 24) and p.self_per_year == pytest.approx(
        14 * 24 * 365
    )
    cheap, dear = p.apis
    assert cheap.per_day == pytest.approx(4e9 * 0.1 / 1e6 + 2e9 * 0.4 / 1e6)  # $1,200
    assert dear.per_year == pytest.approx((4e9 * 2 / 1e6 + 2e9 * 8 / 1e6) * 365)
    assert dear.savings_per_year == pytest.approx(dear.per_year - p.self_per_year)


@pytest.mark.parametrize(
    "text",
    [
        "users=10",
        "users=x,requests_per_user=1,input_tokens=1,output_tokens=1",
        "bogus=1",
        "users=1,requests_per_user=1,input_tokens=1,output_tokens=1,peak=0.5",
    ],
)
def test_bad_scenarios_say_why(text):
    with pytest.raises(CostError, match="scenario"):
        parse_scenario(text)


def test_hardware_from_config(table):
    config = load_config(env={}, overrides={"cost": {"hardware": "box"}})
    assert hardware_from_config(config.cost, table).price_per_hour == 1.0
    mine = load_config(env={}, overrides={"cost": {"hardware_price_per_hour": 0.5, "replicas": 3}})
    hw = hardware_from_config(mine.cost, table)
    assert (hw.price_per_hour, hw.replicas, hw.name) == (0.5, 3, "custom")
    with pytest.raises(CostError, match="not in the price table"):
        hardware_from_config(load_config(env={}).cost, table)  # cpu-small is not in it


def test_observed_traffic_reads_ledger_and_busy_time(db_url):
    db = Database.open(db_url)
    ledger = UsageLedger(db)
    t0 = 1_764_000_000.0
    for k in range(3):
        ledger.record(
            UsageRow(
                request_id=f"r{k}",
                tenant_id="acme",
                key_id=None,
                endpoint="chat.completions",
                model="tiny",
                status="ok",
                prompt_tokens=100,
                completion_tokens=50,
                created_at=t0 + k,
            )
        )
    ledger.record(BusySample("host-a", 2.5, at=t0))
    ledger.record(BusySample("host-a", 1.5, at=t0 + 1))
    ledger.record(BusySample("host-b", 1.0, at=t0 + 1))
    ledger.close()
    traffic = observed_traffic(db, since=t0, until=t0 + 3600)
    assert (traffic.prompt_tokens, traffic.completion_tokens, traffic.requests) == (300, 150, 3)
    assert traffic.busy_s == pytest.approx(5.0) and traffic.window_s == 3600
    assert traffic.throughput_tps == pytest.approx(90.0)
    db.close()


def test_embedding_tokens_are_priced_apart_from_chat(db_url, tmp_path):
    db = Database.open(db_url)
    ledger = UsageLedger(db)
    t0 = 1_764_000_000.0
    for k, (endpoint, prompt, completion) in enumerate(
        [("chat.completions", 100, 50), ("embeddings", 2_000_000, 0), ("embeddings", 500, 0)]
    ):
        ledger.record(
            UsageRow(
                request_id=f"r{k}",
                tenant_id="acme",
                key_id=None,
                endpoint=endpoint,
                model="m",
                status="ok",
                prompt_tokens=prompt,
                completion_tokens=completion,
                created_at=t0 + k,
            )
        )
    ledger.close()
    traffic = observed_traffic(db, since=t0, until=t0 + 3600)
    db.close()
    assert (traffic.prompt_tokens, traffic.completion_tokens) == (100, 50)  # chat only
    assert traffic.embedding_tokens == 2_000_500 and traffic.requests == 3
    path = tmp_path / "prices.toml"
    path.write_text("[api.cheap]\ninput = 0.1\noutput = 0.4\n[embedding.small]\ninput = 0.02\n")
    acc = account(traffic, Hardware("box", 1.0), load_price_table(path))
    [cheap] = acc.comparisons
    assert cheap.api_cost == pytest.approx((100 * 0.1 + 50 * 0.4) / 1e6)  # no embedding tokens
    [small] = acc.embedding_costs
    assert small.api.name == "small" and small.api_cost == pytest.approx(2.0005 * 0.02)
    shipped = load_price_table()
    assert {"text-embedding-3-small"} <= {e.name for e in shipped.embeddings}
    assert all(e.source.startswith("https://") and e.as_of for e in shipped.embeddings)


def test_busy_tracker_samples_growth_and_survives_engine_restart():
    from ownllm.gateway.metering import BusyTracker

    class Engine:
        busy = 0.0

        def stats(self):
            return EngineStats(busy_seconds=self.busy)

    engine = Engine()
    tracker = BusyTracker(lambda: engine, replica="host-a")
    engine.busy = 2.0
    assert tracker.take(force=True).busy_seconds == 2.0
    assert tracker.take() is None  # sampled at most every few seconds
    engine.busy = 5.0
    assert tracker.take(force=True).busy_seconds == 3.0
    engine.busy = 1.0  # a new engine counts from 0 again
    assert tracker.take(force=True).busy_seconds == 1.0
    assert tracker.take(force=True) is None  # nothing new


def test_served_traffic_and_engine_busy_time_reach_the_cost_account(tmp_path, tiny_model_dir):
    """The real server and engine: ledger rows and engine busy time are written (at
    shutdown at the latest), and `ownllm cost` turns them into a throughput."""
    import subprocess
    import sys

    import httpx

    from tests.server import Server

    server = Server(
        "--model",
        str(tiny_model_dir),
        "--name",
        "tiny",
        data_dir=tmp_path,
        env={"OWNLLM_MODEL_DEVICE": "cpu"},
    )
    try:
        server.wait_ready()
        seen = 0
        for _ in range(3):
            response = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                timeout=60,
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 8,
                    "ignore_eos": True,  # 8 tokens each, whatever the random model says
                },
            )
            assert response.json()["usage"]["completion_tokens"] == 8
            seen += response.json()["usage"]["total_tokens"]
    finally:
        server.stop()
    db = Database.open(f"sqlite:///{tmp_path / 'ownllm.db'}")
    traffic = observed_traffic(db)
    db.close()
    assert traffic.requests == 3 and traffic.total_tokens == seen
    assert traffic.busy_s > 0 and traffic.throughput_tps > 0
    out = subprocess.run(
        [sys.executable, "-m", "ownllm", "cost", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "3 requests" in out and "measured throughput" in out


# -- batch prices, and what a batch saved -----------------------------------------------------


def test_shipped_table_has_batch_prices_and_marks_every_price_unconfirmed():
    shipped = load_price_table()
    for api in shipped.apis:
        assert api.has_batch_price and api.batch_source.startswith("https://")
        assert api.batch_input < api.input and api.batch_output < api.output
        assert not api.confirmed  # nobody could check them: no internet where they were typed
    pages = unconfirmed_sources(shipped.apis)
    assert set(pages["https://platform.openai.com/docs/guides/batch"]) >= {"gpt-4o-mini"}
    assert sum(len(v) for v in pages.values()) == 2 * len(shipped.apis)  # list + batch page


def test_a_confirmed_price_needs_its_check_date(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[api.x]\ninput = 1.0\noutput = 2.0\nstatus = "confirmed"\n')
    with pytest.raises(CostError, match="checked"):
        load_price_table(path)
    path.write_text(
        '[api.x]\ninput = 1.0\noutput = 2.0\nstatus = "confirmed"\nchecked = "2026-12-01"\n'
    )
    (api,) = load_price_table(path).apis
    assert api.confirmed and api.checked == "2026-12-01" and not api.has_batch_price
    assert api.batch_cost(1e6, 1e6) == api.cost(1e6, 1e6) == 3.0  # no batch tier: list price


def test_batch_lines_are_priced_at_batch_prices_and_their_saving_shown(db_url, tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        "[api.cheap]\ninput = 0.2\noutput = 0.8\nbatch_input = 0.1\nbatch_output = 0.4\n"
        "[api.flat]\ninput = 1.0\noutput = 1.0\n"
    )
    table = load_price_table(path)
    db = Database.open(db_url)
    ledger = UsageLedger(db)
    t0 = 1_764_000_000.0
    lines = [(None, 1_000_000, 1_000_000)]  # a live request
    lines += [("batch_abc", 500_000, 250_000)] * 2 + [("batch_def", 1_000_000, 500_000)]
    lines += [("evalrun_x", 7, 7)]  # an eval run marks its rows too: not a batch line
    for k, (batch_id, p, c) in enumerate(lines):
        ledger.record(
            UsageRow(
                request_id=f"r{k}",
                tenant_id="acme",
                key_id=None,
                endpoint="chat.completions",
                model="tiny",
                status="ok",
                prompt_tokens=p,
                completion_tokens=c,
                batch_id=batch_id,
                created_at=t0 + k,
            )
        )
    ledger.close()
    traffic = observed_traffic(db, since=t0, until=t0 + 36_000)
    db.close()
    assert (traffic.batch_lines, traffic.batches) == (3, 2)
    assert (traffic.batch_prompt_tokens, traffic.batch_completion_tokens) == (2e6, 1e6)
    acc = account(traffic, Hardware("box", 1.0), table)  # 10 h at $1/h = $10
    cheap, flat = acc.comparisons
    # live 1M + 1M (+ the eval's 14 tokens) at list, batch 2M + 1M at the batch price
    assert cheap.api_cost == pytest.approx((1e6 + 7) * 0.2e-6 + (1e6 + 7) * 0.8e-6 + 0.6)
    assert flat.api_cost == pytest.approx((2e6 + 14) * 1e-6 + 3.0)
    saving, flat_saving = acc.batch_savings
    assert saving.at_batch_price == pytest.approx(2 * 0.1 + 1 * 0.4)
    assert saving.at_list_price == pytest.approx(2 * 0.2 + 1 * 0.8)
    share = 3e6 / (5e6 + 14)  # the batch lines' tokens over all served here
    assert saving.self_hosted == pytest.approx(10.0 * share)
    assert saving.saved == pytest.approx(0.6 - 10.0 * share)
    assert flat_saving.at_batch_price == flat_saving.at_list_price == pytest.approx(3.0)
