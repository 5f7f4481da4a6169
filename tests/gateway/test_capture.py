"""Capture → feedback → dataset export, against the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text

from ownllm.config import CaptureConfig
from ownllm.errors import InvalidRequestError, NotFoundError
from ownllm.gateway import capture
from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.policy import load_policy
from ownllm.gateway.principal import Principal
from ownllm.gateway.purge import purge_expired
from ownllm.store.db import Database
from ownllm.store.schema import ApiKey, GuardEvent, StoredCompletion, Tenant

ACME = Principal(tenant_id="acme", key_id="key-acme")
GLOBEX = Principal(tenant_id="globex", key_id="key-globex")
PII = ["maria.rossi@example.it", "4111 1111 1111 1111", "+39 06 1234 5678",
       "IT60X0542811101000000123456", "AKIAIOSFODNN7EXAMPLE", "536-22-1234"]  # fmt: skip


@pytest.fixture
def db(db_url):
    database = Database.open(db_url)
    yield database
    database.close()


@pytest.fixture
def guard():
    return Guard(load_policy())


def completion(cid: str, answer: str, model: str = "tiny", finish_reason: str = "stop",
               created: int | None = None) -> dict:  # fmt: skip
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": finish_reason,
            }
        ],  # fmt: skip
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def store(db, guard, cid, question, answer, principal=ACME, **kw):
    messages = [{"role": "system", "content": "You are the support bot."},
                {"role": "user", "content": question}]  # fmt: skip
    metadata = kw.pop("metadata", None)
    return capture.store_completion(db, guard, principal=principal, messages=messages,
                                    completion=completion(cid, answer, **kw), metadata=metadata)  # fmt: skip


def test_stored_rows_contain_no_original_pii(db, guard):
    question = f"I am {PII[0]}, card {PII[1]}, phone {PII[2]}, IBAN {PII[3]}, SSN {PII[5]}."
    row = store(db, guard, "chatcmpl-pii", question, f"Noted your key {PII[4]} and {PII[0]}.")
    assert row.request["messages"][1]["content"] == (
        "I am [EMAIL], card [CARD], phone [PHONE], IBAN [IBAN], SSN [SSN]."
    )
    assert (
        row.response["choices"][0]["message"]["content"] == "Noted your key [SECRET] and [EMAIL]."
    )
    capture.set_feedback(db, guard, ACME, "chatcmpl-pii", rating=2,
                         correction=f"Please write to {PII[0]} instead.")  # fmt: skip
    with db.engine.connect() as c:  # every column of every captured row, as the DB holds it
        dump = json.dumps(
            [list(map(str, r)) for r in c.execute(text("SELECT * FROM stored_completions"))]
        )
        dump += json.dumps(
            [list(map(str, r)) for r in c.execute(text("SELECT * FROM guard_events"))]
        )
    for value in PII:
        assert value not in dump and value.replace(" ", "") not in dump
    assert "[EMAIL]" in dump and "pii.card" in dump


def test_store_precedence_request_then_key_then_tenant_then_server(db):
    with db.session() as s:
        s.add(Tenant(id="acme", created_at=0, capture_default=True))
        s.add(Tenant(id="globex", created_at=0, capture_default=False))
        s.flush()
        s.add(ApiKey(id="key-acme", tenant_id="acme", name="k", prefix="sk-a", key_hash="h1",
                     scopes=[], created_at=0, capture_default=False))  # fmt: skip
    off, on = CaptureConfig(default_store=False), CaptureConfig(default_store=True)
    assert capture.should_store(db, ACME, True, off) is True
    assert capture.should_store(db, ACME, None, off) is False  # the key says no
    assert capture.should_store(db, Principal("acme", key_id="key-other"), None, off) is True
    assert capture.should_store(db, GLOBEX, None, off) is False
    assert capture.should_store(db, GLOBEX, None, on) is True
    assert capture.should_store(db, GLOBEX, False, on) is False


def test_capture_block_rule_keeps_nothing(db):
    from ownllm.gateway.guard.policy import parse_policy

    guard = Guard(parse_policy({"rules": [{"id": "no-secrets", "detector": "api_key",
                                           "stages": ["capture"], "action": "block"}]}))  # fmt: skip
    assert store(db, guard, "chatcmpl-s", "key AKIAIOSFODNN7EXAMPLE", "ok") is None
    with db.session() as s:
        assert s.get(StoredCompletion, "chatcmpl-s") is None
        events = s.query(GuardEvent).all()
    assert [(e.stage, e.action, e.counts) for e in events] == [
        ("capture", "block", {"no-secrets": 1})
    ]


def test_feedback_validation_and_tenant_isolation(db, guard):
    store(db, guard, "chatcmpl-1", "hi", "hello")
    with pytest.raises(InvalidRequestError, match="from 1 to 5") as e:
        capture.set_feedback(db, guard, ACME, "chatcmpl-1", rating=9, correction=None)
    assert e.value.param == "rating"
    with pytest.raises(InvalidRequestError, match="a `rating`, a `correction`, or both"):
        capture.set_feedback(db, guard, ACME, "chatcmpl-1", rating=None, correction=None)
    with pytest.raises(NotFoundError):
        capture.set_feedback(db, guard, GLOBEX, "chatcmpl-1", rating=5, correction=None)
    with pytest.raises(NotFoundError):
        capture.get_completion(db, GLOBEX, "chatcmpl-1")
    row = capture.set_feedback(db, guard, ACME, "chatcmpl-1", rating=5, correction=None)
    assert (row.rating, row.correction) == (5, None)


def test_list_filters_by_model_and_metadata_with_cursor_pages(db, guard):
    for i in range(5):
        store(db, guard, f"chatcmpl-{i}", f"q{i}", f"a{i}", created=1000 + i,
              model="m1" if i % 2 == 0 else "m2", metadata={"team": "red" if i < 3 else "blue"})  # fmt: skip
    store(db, guard, "chatcmpl-g", "q", "a", principal=GLOBEX, created=999)
    page, more = capture.list_completions(db, ACME, limit=2)
    assert [r.id for r in page] == ["chatcmpl-0", "chatcmpl-1"] and more
    page, more = capture.list_completions(db, ACME, limit=2, after="chatcmpl-1")
    assert [r.id for r in page] == ["chatcmpl-2", "chatcmpl-3"] and more
    page, more = capture.list_completions(db, ACME, limit=2, after="chatcmpl-3")
    assert [r.id for r in page] == ["chatcmpl-4"] and not more
    page, _ = capture.list_completions(db, ACME, order="desc", limit=10)
    assert [r.id for r in page] == [f"chatcmpl-{i}" for i in (4, 3, 2, 1, 0)]
    page, _ = capture.list_completions(db, ACME, model="m1", metadata={"team": "red"})
    assert [r.id for r in page] == ["chatcmpl-0", "chatcmpl-2"]
    page, _ = capture.list_completions(db, GLOBEX)
    assert [r.id for r in page] == ["chatcmpl-g"]
    with pytest.raises(NotFoundError):  # another tenant's id is no cursor either
        capture.list_completions(db, GLOBEX, after="chatcmpl-1")


def test_export_uses_corrections_drops_bad_cut_off_and_duplicate_answers(db, guard):
    store(db, guard, "c-good", "What is our refund window?", "30 days.", created=100)
    store(db, guard, "c-dup", "What is our refund window?", "30 days.", created=101)
    store(db, guard, "c-bad", "Do we ship to Mars?", "Yes, daily.", created=102)
    store(db, guard, "c-fixed", "Who approves refunds?", "Nobody.", created=103)
    store(db, guard, "c-cut", "Tell me a story", "Once upon", finish_reason="length", created=104)
    store(db, guard, "c-other-model", "Hi", "Hello!", model="other", created=105)
    store(db, guard, "c-globex", "Globex q", "Globex a", principal=GLOBEX, created=106)
    capture.set_feedback(db, guard, ACME, "c-good", rating=5, correction=None)
    capture.set_feedback(db, guard, ACME, "c-bad", rating=1, correction=None)
    capture.set_feedback(db, guard, ACME, "c-fixed", rating=1,
                         correction="A team lead approves refunds; mail lead@acme.example.")  # fmt: skip
    examples, stats = capture.export_dataset(db, tenant_id="acme", model="tiny")
    answers = [e["messages"][-1]["content"] for e in examples]
    assert answers == ["30 days.", "A team lead approves refunds; mail [EMAIL]."]
    assert examples[0]["messages"] == [
        {"role": "system", "content": "You are the support bot."},
        {"role": "user", "content": "What is our refund window?"},
        {"role": "assistant", "content": "30 days."},
    ]
    assert (stats.num_rows, stats.num_exported, stats.num_duplicates, stats.num_corrected) == (
        5,
        2,
        1,
        1,
    )
    rated, _ = capture.export_dataset(db, tenant_id="acme", min_rating=4)
    assert [e["messages"][-1]["content"] for e in rated] == answers  # unrated c-other-model out
    recent, _ = capture.export_dataset(db, since=105)
    assert [e["messages"][-1]["content"] for e in recent] == ["Hello!", "Globex a"]
    for line in capture.to_jsonl(examples).splitlines():
        assert set(json.loads(line)) == {"messages"}


def test_retention_purge_deletes_only_expired_rows(db, guard):
    now = time.time()
    store(db, guard, "c-old", "q", "a", created=int(now - 40 * 86400))
    store(db, guard, "c-new", "q", "a", created=int(now - 5 * 86400))
    with db.session() as s:
        s.add(GuardEvent(created_at=now - 40 * 86400, tenant_id="acme", request_id="c-old",
                         stage="input", action="flag", rule_ids=["x"], counts={"x": 1}))  # fmt: skip
    assert purge_expired(db, 0, now) == {}  # 0 keeps everything
    assert purge_expired(db, 30, now) == {
        "stored_completions": 1,
        "stored_responses": 0,
        "guard_events": 1,
    }
    with db.session() as s:
        assert [r.id for r in s.query(StoredCompletion).all()] == ["c-new"]
        assert all(e.created_at > now - 30 * 86400 for e in s.query(GuardEvent).all())


async def test_serve_runs_the_retention_purge_periodically(db, guard, tmp_path):
    import asyncio
    from dataclasses import replace

    from ownllm.config import load_config
    from ownllm.gateway.purge import start_retention

    config = load_config(env={}, overrides={"store": {"data_dir": str(tmp_path)}})
    store(db, guard, "c-old", "q", "a", created=int(time.time() - 31 * 86400))
    task = start_retention(db, config.capture)
    deadline = time.monotonic() + 120  # the first purge runs at start; this bounds a hang
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        with db.session() as s:
            if s.get(StoredCompletion, "c-old") is None:
                break
    task.cancel()
    with db.session() as s:
        assert s.get(StoredCompletion, "c-old") is None
    assert start_retention(db, replace(config.capture, retention_days=0)) is None
