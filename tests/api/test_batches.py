"""The Batch API on an in-process app over a ScriptedBackend (counting "tok0 tok1 …"), with
the batch worker driven by hand (`BatchWorker.drain`), so every ending is constructed:
validation errors naming lines, answers through the gateway path, cancel, expiry, a lost
worker's lines answered once, tenant isolation, the purge."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import select, update

from ownllm.api.batch_worker import BatchWorker
from ownllm.api.state import AppState
from ownllm.backends.base import PRIORITY_BATCH
from ownllm.batches import store
from ownllm.config import load_config
from ownllm.gateway.principal import Limits
from ownllm.gateway.purge import purge_tenant
from ownllm.store.schema import Batch, BatchLine, File, UsageRecord

CHAT = "/v1/chat/completions"
MODEL = AppState(config=load_config(env={}), data_dir=None).model_id  # what the app serves


def chat_line(custom_id: str, content: str = "hi", **body) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(*items) -> bytes:
    return b"".join((i if isinstance(i, bytes) else json.dumps(i).encode()) + b"\n" for i in items)


@pytest.fixture
def batch_app(make_gateway):
    """(client factory, state, worker) over the tenants' database."""
    app, state = make_gateway()
    worker = BatchWorker(state, app.state.gateway, worker_id="w1")
    return app, state, worker


def client_for(app, headers) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


async def submit(client, content: bytes, endpoint: str = CHAT, **extra) -> dict:
    r = await client.post(
        "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
    )
    assert r.status_code == 200, r.text
    body = {"input_file_id": r.json()["id"], "endpoint": endpoint, "completion_window": "24h"}
    r = await client.post("/v1/batches", json={**body, **extra})
    assert r.status_code == 200, r.text
    return r.json()


async def content_lines(client, file_id: str) -> list[dict]:
    r = await client.get(f"/v1/files/{file_id}/content")
    assert r.status_code == 200
    return [json.loads(x) for x in r.content.splitlines()]


async def test_a_batch_runs_every_line_through_the_gateway_and_writes_the_output(
    batch_app, two_tenants
):
    app, state, worker = batch_app
    async with client_for(app, two_tenants.a.headers) as c:
        lines = [chat_line(f"req-{i}", max_tokens=3 + i) for i in range(3)]
        created = await submit(c, jsonl(*lines), metadata={"job": "nightly"})
        assert created["status"] == "validating"
        assert created["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
        assert created["metadata"] == {"job": "nightly"}
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert batch[stamp] >= batch["created_at"]
    assert batch["expires_at"] == batch["created_at"] + 24 * 3600
    assert "error_file_id" not in batch
    async with client_for(app, two_tenants.a.headers) as c:
        out = await content_lines(c, batch["output_file_id"])
        meta = (await c.get(f"/v1/files/{batch['output_file_id']}")).json()
    assert meta["purpose"] == "batch_output"
    assert [x["custom_id"] for x in out] == ["req-0", "req-1", "req-2"]
    for i, x in enumerate(out):
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200
        body = x["response"]["body"]
        assert body["object"] == "chat.completion"
        assert x["response"]["request_id"] == body["id"]
        expected = "".join(f"tok{k} " for k in range(3 + i))
        assert body["choices"][0]["message"]["content"] == expected
        assert body["usage"]["completion_tokens"] == 3 + i
    # the engine saw batch priority; the ledger names the batch and the key
    assert {r.priority for r in state.backend.requests} == {PRIORITY_BATCH}
    app.state.gateway.ledger.flush()
    with two_tenants.db.session() as s:
        rows = list(s.scalars(select(UsageRecord).where(UsageRecord.batch_id == batch["id"])))
    assert len(rows) == 3
    assert {(r.tenant_id, r.key_id, r.status) for r in rows} == {
        ("acme", two_tenants.a.key_id, "ok")
    }
    assert sorted(r.completion_tokens for r in rows) == [3, 4, 5]


async def test_validation_names_each_bad_line_and_fails_the_batch(batch_app, two_tenants):
    app, _, worker = batch_app
    content = jsonl(
        chat_line("ok-1"),
        b"{not json",
        {**chat_line("u"), "url": "/v1/images/generations"},
        {**chat_line("m"), "method": "GET"},
        {"custom_id": "b", "method": "POST", "url": CHAT, "body": {"model": "fake"}},
        chat_line("ok-1"),
        {**chat_line("e"), "url": "/v1/embeddings"},
        chat_line("s", stream=True),
        {"method": "POST", "url": CHAT, "body": {}},
    )
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, content)
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
    assert batch["status"] == "failed" and batch["failed_at"] >= batch["created_at"]
    assert "output_file_id" not in batch and "in_progress_at" not in batch
    errors = batch["errors"]["data"]
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"),
        (3, "invalid_url"),
        (4, "invalid_method"),
        (5, "invalid_body"),
        (6, "duplicate_custom_id"),
        (7, "mismatched_endpoint"),
        (8, "invalid_body"),
        (9, "missing_required_parameter"),
    ]
    assert errors[3]["param"] == "body.messages" and "Line 5" in errors[3]["message"]
    assert errors[7]["param"] == "custom_id"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


async def test_size_limits_fail_the_batch_naming_the_line_or_the_file(batch_app, two_tenants):
    app, state, _ = batch_app
    state.config = replace(state.config, batch=replace(state.config.batch, max_lines=2))
    worker = BatchWorker(state, app.state.gateway, worker_id="w1")
    async with client_for(app, two_tenants.a.headers) as c:
        many = await submit(c, jsonl(*(chat_line(f"r{i}") for i in range(3))))
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{many['id']}")).json()
        assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [(3, "too_many_lines")]
        state.config = replace(state.config, batch=replace(state.config.batch, max_file_bytes=10))
        big = await submit(c, jsonl(chat_line("r")))
        await BatchWorker(state, app.state.gateway, worker_id="w2").drain()
        batch = (await c.get(f"/v1/batches/{big['id']}")).json()
        assert batch["status"] == "failed"
        assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [
            (None, "file_too_large")
        ]
        empty = await submit(c, b"\n\n")
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{empty['id']}")).json()
        assert batch["errors"]["data"][0]["code"] == "empty_file"


async def test_a_line_the_server_refuses_goes_to_the_error_file(batch_app, two_tenants):
    app, _, worker = batch_app
    content = jsonl(chat_line("good"), {**chat_line("bad"), "body": {**chat_line("x")["body"],
                    "model": "no-such-model"}})  # fmt: skip
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, content)
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
        out = await content_lines(c, batch["output_file_id"])
        err = await content_lines(c, batch["error_file_id"])
    assert [x["custom_id"] for x in out] == ["good"]
    assert [x["custom_id"] for x in err] == ["bad"]
    assert err[0]["response"]["status_code"] == 404
    assert err[0]["response"]["body"]["error"]["param"] == "model"


async def test_embeddings_and_completions_batches(batch_app, two_tenants):
    app, _, worker = batch_app
    emb = {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
           "body": {"model": "all-minilm-l6-v2", "input": ["a", "b"]}}  # fmt: skip
    cmp = {"custom_id": "c1", "method": "POST", "url": "/v1/completions",
           "body": {"model": MODEL, "prompt": "say", "max_tokens": 2}}  # fmt: skip
    async with client_for(app, two_tenants.a.headers) as c:
        e = await submit(c, jsonl(emb), endpoint="/v1/embeddings")
        p = await submit(c, jsonl(cmp), endpoint="/v1/completions")
        await worker.drain()
        e = (await c.get(f"/v1/batches/{e['id']}")).json()
        p = (await c.get(f"/v1/batches/{p['id']}")).json()
        (eline,) = await content_lines(c, e["output_file_id"])
        (pline,) = await content_lines(c, p["output_file_id"])
    assert len(eline["response"]["body"]["data"]) == 2
    assert pline["response"]["body"]["choices"][0]["text"] == "tok0 tok1 "


async def test_create_checks_its_fields_and_the_file(batch_app, two_tenants):
    app, _, _ = batch_app
    async with client_for(app, two_tenants.a.headers) as c:
        r = await c.post("/v1/files", files={"file": ("t.jsonl", b"{}")},
                         data={"purpose": "fine-tune"})  # fmt: skip
        tuning_file = r.json()["id"]
        base = {"input_file_id": tuning_file, "endpoint": CHAT, "completion_window": "24h"}
        r = await c.post("/v1/batches", json=base)
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_id"
        r = await c.post("/v1/batches", json={**base, "endpoint": "/v1/images"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"
        r = await c.post("/v1/batches", json={**base, "completion_window": "1h"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "completion_window"
        r = await c.post("/v1/batches", json={**base, "input_file_id": "file-nope"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"
        r = await c.get("/v1/batches/batch_nope")
        assert r.status_code == 404


async def test_another_tenant_sees_no_batch_and_cannot_batch_a_file(batch_app, two_tenants):
    app, _, worker = batch_app
    async with client_for(app, two_tenants.a.headers) as a:
        created = await submit(a, jsonl(chat_line("x")))
        await worker.drain()
        batch = (await a.get(f"/v1/batches/{created['id']}")).json()
    async with client_for(app, two_tenants.b.headers) as b:
        assert (await b.get(f"/v1/batches/{created['id']}")).status_code == 404
        assert (await b.post(f"/v1/batches/{created['id']}/cancel")).status_code == 404
        assert (await b.get("/v1/batches")).json()["data"] == []
        r = await b.post("/v1/batches", json={"input_file_id": created["input_file_id"],
                         "endpoint": CHAT, "completion_window": "24h"})  # fmt: skip
        assert r.status_code == 404
        assert (await b.get(f"/v1/files/{batch['output_file_id']}/content")).status_code == 404


async def test_list_pages_newest_first_with_a_cursor(batch_app, two_tenants):
    app, _, _ = batch_app
    async with client_for(app, two_tenants.a.headers) as c:
        ids = [(await submit(c, jsonl(chat_line("x"))))["id"] for _ in range(3)]
        page = (await c.get("/v1/batches?limit=2")).json()
        assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"]
        rest = (await c.get(f"/v1/batches?limit=2&after={page['last_id']}")).json()
        assert [b["id"] for b in rest["data"]] == [ids[0]] and not rest["has_more"]
        assert (await c.get("/v1/batches?limit=0")).status_code == 400


async def test_cancel_drops_unstarted_lines_and_keeps_finished_ones(batch_app, two_tenants):
    app, state, _ = batch_app
    state.config = replace(state.config, batch=replace(state.config.batch, max_concurrent_lines=1))
    worker = BatchWorker(state, app.state.gateway, worker_id="w1")
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, jsonl(*(chat_line(f"r{i}") for i in range(4))))
        await worker.step()  # validates
        await worker.step()  # takes the first line
        await asyncio.wait(list(worker.running.values()))
        r = await c.post(f"/v1/batches/{created['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelling"
        assert r.json()["cancelling_at"] >= created["created_at"]
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        assert batch["status"] == "cancelled" and batch["cancelled_at"] >= batch["created_at"]
        assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 0}
        out = await content_lines(c, batch["output_file_id"])
        assert [x["custom_id"] for x in out] == ["r0"]
        assert len(state.backend.requests) == 1  # the cancelled lines never ran
        again = await c.post(f"/v1/batches/{created['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        done = await submit(c, jsonl(chat_line("x")))
        await worker.drain()
        r = await c.post(f"/v1/batches/{done['id']}/cancel")
        assert r.status_code == 409 and "completed" in r.json()["error"]["message"]


async def test_a_batch_past_its_window_expires_keeping_its_finished_lines(batch_app, two_tenants):
    app, state, _ = batch_app
    state.config = replace(state.config, batch=replace(state.config.batch, max_concurrent_lines=1))
    worker = BatchWorker(state, app.state.gateway, worker_id="w1")
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, jsonl(*(chat_line(f"r{i}") for i in range(3))))
        await worker.step()  # validates
        await worker.step()  # takes the first line
        await asyncio.wait(list(worker.running.values()))
        with two_tenants.db.session() as s:
            s.execute(update(Batch).where(Batch.id == created["id"]).values(expires_at=1))
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        assert batch["status"] == "expired" and batch["expired_at"] >= batch["created_at"]
        assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
        out = await content_lines(c, batch["output_file_id"])
        err = await content_lines(c, batch["error_file_id"])
    assert [x["custom_id"] for x in out] == ["r0"]
    assert [(x["custom_id"], x["error"]["code"], x["response"]) for x in err] == [
        ("r1", "batch_expired", None),
        ("r2", "batch_expired", None),
    ]


async def test_a_lost_workers_lines_are_answered_once_by_another(batch_app, two_tenants):
    app, state, worker = batch_app
    db = two_tenants.db
    async with client_for(app, two_tenants.a.headers) as c:
        # a worker validates a batch, claims two of its lines and dies holding them
        second = await submit(c, jsonl(*(chat_line(f"s{i}") for i in range(3))))
        other = BatchWorker(state, app.state.gateway, worker_id="dead")
        await other._tend_batch()
        lost = store.claim_lines(db, "dead", 2, lease_s=60, max_attempts=3)
        assert [x.custom_id for x in lost] == ["s0", "s1"]
        await worker.drain()  # takes s2 only: s0, s1 are leased to the dead worker
        with db.session() as s:
            statuses = dict(s.execute(select(BatchLine.custom_id, BatchLine.status)
                                      .where(BatchLine.batch_id == second["id"])).all())  # fmt: skip
        assert statuses == {"s0": "running", "s1": "running", "s2": "done"}
        with db.session() as s:  # the dead worker's leases run out
            s.execute(update(BatchLine).where(BatchLine.worker_id == "dead")
                      .values(lease_until=time.time() - 1))  # fmt: skip
        await worker.drain()
        # the dead worker comes back with an answer: its claim is gone, the answer dropped
        assert not store.record(db, lost[0].id, "dead", "done", {"custom_id": "s0"})
        batch = (await c.get(f"/v1/batches/{second['id']}")).json()
        out = await content_lines(c, batch["output_file_id"])
    assert batch["status"] == "completed"
    assert sorted(x["custom_id"] for x in out) == ["s0", "s1", "s2"]
    assert all(x["response"]["status_code"] == 200 for x in out)
    with db.session() as s:
        attempts = dict(s.execute(select(BatchLine.custom_id, BatchLine.attempts)
                                  .where(BatchLine.batch_id == second["id"])).all())  # fmt: skip
    assert attempts == {"s0": 2, "s1": 2, "s2": 1}
    assert len(state.backend.requests) == 3  # each line ran once


async def test_a_line_lost_too_often_fails_instead_of_looping(batch_app, two_tenants):
    app, _, worker = batch_app
    db = two_tenants.db
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, jsonl(chat_line("r0")))
        await worker._tend_batch()
        for attempt in range(3):
            (line,) = store.claim_lines(db, f"dead{attempt}", 1, lease_s=60, max_attempts=3)
            with db.session() as s:
                s.execute(update(BatchLine).where(BatchLine.id == line.id)
                          .values(lease_until=time.time() - 1))  # fmt: skip
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        (err,) = await content_lines(c, batch["error_file_id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert err["error"]["code"] == "worker_lost"


async def test_the_tenant_purge_removes_batches_lines_and_their_files(batch_app, two_tenants):
    app, state, worker = batch_app
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, jsonl(chat_line("x")))
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
    out_path = state.data_dir.files / batch["output_file_id"]
    assert out_path.exists()
    report = purge_tenant(two_tenants.db, state.data_dir, "acme")
    assert report.rows["batches"] == 1 and report.rows["batch_lines"] == 1
    assert not out_path.exists()
    with two_tenants.db.session() as s:
        assert s.get(File, batch["output_file_id"]) is None


async def test_the_batch_pool_keeps_monthly_budgets_not_per_minute_limits(batch_app, two_tenants):
    app, _, worker = batch_app
    paced = two_tenants.add_key("acme", "paced", limits=Limits(rpm=1, max_concurrent=1))
    async with client_for(app, paced.headers) as c:
        created = await submit(c, jsonl(*(chat_line(f"r{i}", max_tokens=2) for i in range(3))))
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    broke = two_tenants.add_key("acme", "broke", limits=Limits(monthly_tokens=5))
    async with client_for(app, broke.headers) as c:
        created = await submit(c, jsonl(chat_line("big", max_tokens=50)))
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        (err,) = await content_lines(c, batch["error_file_id"])
    assert err["response"]["status_code"] == 429
    assert err["response"]["body"]["error"]["code"] == "insufficient_quota"


async def test_a_revoked_key_stops_its_batch(batch_app, two_tenants):
    from ownllm.gateway.keys import revoke_key

    app, _, worker = batch_app
    extra = two_tenants.add_key("acme", "temp")
    async with client_for(app, extra.headers) as c:
        created = await submit(c, jsonl(chat_line("r0")))
    revoke_key(two_tenants.db, extra.key_id)
    await worker.drain()
    async with client_for(app, two_tenants.a.headers) as c:
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        (err,) = await content_lines(c, batch["error_file_id"])
    assert err["response"]["status_code"] == 401


async def test_a_responses_batch(batch_app, two_tenants):
    app, _, worker = batch_app

    def line(custom_id: str, **body) -> dict:
        body = {"model": MODEL, "input": "hi", "max_output_tokens": 3, **body}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}

    content = jsonl(line("ok"), line("gone", previous_response_id="resp_nope"))
    async with client_for(app, two_tenants.a.headers) as c:
        created = await submit(c, content, endpoint="/v1/responses")
        await worker.drain()
        batch = (await c.get(f"/v1/batches/{created['id']}")).json()
        (ok,) = await content_lines(c, batch["output_file_id"])
        (gone,) = await content_lines(c, batch["error_file_id"])
    body = ok["response"]["body"]
    assert body["object"] == "response" and body["status"] == "incomplete"  # 3 tokens, cut
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == "tok0 tok1 tok2 "
    assert gone["response"]["status_code"] == 404
    assert gone["response"]["body"]["error"]["param"] == "previous_response_id"
