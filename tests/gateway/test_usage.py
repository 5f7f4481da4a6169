"""The usage ledger: rows queued and written in the background, aggregated by group."""

from __future__ import annotations

import pytest

from ownllm.errors import InvalidRequestError
from ownllm.gateway.usage import UsageLedger, UsageRow, parse_since, summarize
from ownllm.store.db import Database

DAY1, DAY2 = 1_764_000_000.0, 1_764_000_000.0 + 86_400


def row(tenant="acme", key="key-a", model="tiny", status="ok", p=10, c=5, at=DAY1, **kw):
    return UsageRow(
        request_id=f"req-{at}-{p}-{c}",
        tenant_id=tenant,
        key_id=key,
        endpoint="chat.completions",
        model=model,
        status=status,
        prompt_tokens=p,
        completion_tokens=c,
        latency_ms=100.0,
        ttft_ms=20.0,
        created_at=at,
        **kw,
    )


@pytest.fixture
def ledger(db_url):
    db = Database.open(db_url)
    ledger = UsageLedger(db)
    yield ledger
    ledger.close()
    db.close()


def test_rows_from_many_threads_are_all_written(ledger):
    import threading

    def burst():
        for _ in range(50):
            ledger.record(row())

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.flush()
    [total] = summarize(ledger.db, by="tenant")
    assert total["requests"] == 200 and total["prompt_tokens"] == 2000
    assert ledger.num_lost == 0


def test_summary_by_day_model_key_and_tenant_filter(ledger):
    ledger.record(row(p=10, c=5))
    ledger.record(
        row(
            model="ft:tiny:acme:x:1",
            key="key-b",
            p=7,
            c=0,
            status="error",
            http_status=429,
            error_code="rate_limit_exceeded",
        )
    )
    ledger.record(row(at=DAY2, p=3, c=2, status="disconnected"))
    ledger.record(row(tenant="globex", key="key-g", p=1000, c=1000, status="cancelled"))
    ledger.flush()
    by_day = summarize(ledger.db, by="day", tenant_id="acme")
    assert [(d["day"], d["requests"], d["total_tokens"]) for d in by_day] == [
        ("2025-11-24", 2, 22),
        ("2025-11-25", 1, 5),
    ]
    assert by_day[0]["ok"] == 1 and by_day[0]["error"] == 1 and by_day[1]["disconnected"] == 1
    by_model = {m["model"]: m for m in summarize(ledger.db, by="model", tenant_id="acme")}
    assert set(by_model) == {"tiny", "ft:tiny:acme:x:1"}
    by_key = summarize(ledger.db, by="key", tenant_id="acme", since=DAY2)
    assert [(k["key"], k["prompt_tokens"]) for k in by_key] == [("key-a", 3)]
    everyone = summarize(ledger.db, by="status")
    assert {s["status"]: s["requests"] for s in everyone} == {
        "cancelled": 1,
        "disconnected": 1,
        "error": 1,
        "ok": 1,
    }


def test_bad_group_and_since_name_the_param(ledger):
    with pytest.raises(InvalidRequestError) as e:
        summarize(ledger.db, by="hour")
    assert e.value.param == "by"
    with pytest.raises(InvalidRequestError) as e:
        parse_since("last tuesday")
    assert e.value.param == "since"


def test_parse_since_forms():
    assert parse_since("7d", now=DAY2) == DAY2 - 7 * 86400
    assert parse_since("30m", now=DAY2) == DAY2 - 1800
    assert parse_since("2025-11-24") == 1_763_942_400.0
    assert parse_since("1764000000") == DAY1
    assert parse_since(None) is None


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        row(status="weird")
