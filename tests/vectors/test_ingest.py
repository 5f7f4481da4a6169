"""The ingestion worker on a real database: chunks and vectors written, failures with
OpenAI's codes, resume after a lost worker, cancel, one ledger row per file."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import select, update

from ownllm.store.blobs import DataDir
from ownllm.store.schema import UsageRecord, VectorStoreChunk, VectorStoreFile
from ownllm.tuning.files import save_bytes
from ownllm.vectors import stores
from ownllm.vectors.chunking import Chunking
from ownllm.vectors.ingest import Ingester, claim, recover_stale
from tests.vectors.conftest import ACME
from tests.vectors.documents import pdf_bytes
from tests.vectors.word_embedder import WordEmbedder

SMALL = Chunking(100, 0)


@pytest.fixture
def data_dir(tmp_path):
    return DataDir(tmp_path).ensure()


def upload(db, data_dir, content: bytes, filename: str = "doc.txt", tenant: str = "acme"):
    return save_bytes(
        db, data_dir, [content], tenant_id=tenant, filename=filename, purpose="assistants"
    )


def ingester(db, data_dir, embedder=None, **kw):
    embedder = embedder or WordEmbedder()
    return Ingester(db, data_dir, lambda: embedder, **kw), embedder


def file_row(db, store, file_id) -> VectorStoreFile:
    with db.session() as s:
        return s.get(VectorStoreFile, (store.id, file_id))


def chunks_of(db, store, file_id) -> list[VectorStoreChunk]:
    with db.session() as s:
        return list(
            s.scalars(
                select(VectorStoreChunk)
                .where(
                    VectorStoreChunk.vector_store_id == store.id,
                    VectorStoreChunk.file_id == file_id,
                )
                .order_by(VectorStoreChunk.seq)
            )
        )


def words(n: int, prefix: str = "w") -> bytes:
    return " ".join(f"{prefix}{i}" for i in range(n)).encode()


def test_a_file_becomes_chunks_with_vectors_and_one_ledger_row(db, store, data_dir):
    f = upload(db, data_dir, words(250))
    stores.attach_files(db, ACME, store, [(f.id, SMALL, {"team": "a"})])
    worker, embedder = ingester(db, data_dir)
    assert worker.run_once() is True and worker.run_once() is False
    row = file_row(db, store, f.id)
    assert row.status == "completed" and row.last_error is None and row.worker_id is None
    chunks = chunks_of(db, store, f.id)
    assert [c.num_tokens for c in chunks] == [100, 100, 50] and row.num_chunks == 3
    assert chunks[0].text.split()[0] == "w0" and chunks[2].text.split()[-1] == "w249"
    vector = np.frombuffer(chunks[1].vector, "<f4")
    assert vector.shape == (64,) and np.allclose(vector, embedder.embed([chunks[1].text])[0])
    assert row.usage_bytes == sum(len(c.text.encode()) for c in chunks) + 3 * 64 * 4
    with db.session() as s:
        version = s.get(type(store), store.id).version
        usage = list(
            s.scalars(select(UsageRecord).where(UsageRecord.endpoint == "vector_stores.files"))
        )
    assert version == store.version + 1
    assert [(u.tenant_id, u.prompt_tokens, u.status) for u in usage] == [("acme", 250, "ok")]


def test_a_pdf_is_ingested_through_its_text(db, store, data_dir):
    f = upload(db, data_dir, pdf_bytes(["Quarterly revenue grew nine percent."]), "q3.pdf")
    stores.attach_files(db, ACME, store, [(f.id, SMALL, None)])
    ingester(db, data_dir)[0].run_once()
    assert file_row(db, store, f.id).status == "completed"
    assert "revenue grew nine percent" in chunks_of(db, store, f.id)[0].text


@pytest.mark.parametrize(
    "content, name, code",
    [
        (b"\x00\x01\x02binary", "blob.bin", "unsupported_file"),
        (b"   ", "blank.txt", "invalid_file"),
        (b"%PDF-1.7 truncated", "bad.pdf", "invalid_file"),
    ],
)
def test_unreadable_files_fail_with_last_error(db, store, data_dir, content, name, code):
    f = upload(db, data_dir, content, name)
    stores.attach_files(db, ACME, store, [(f.id, SMALL, None)])
    ingester(db, data_dir)[0].run_once()
    row = file_row(db, store, f.id)
    assert row.status == "failed" and row.last_error["code"] == code and row.last_error["message"]
    assert chunks_of(db, store, f.id) == []


def test_a_crash_mid_file_fails_it_and_leaves_no_chunks(db, store, data_dir):
    f = upload(db, data_dir, words(2000) + b" poison")
    stores.attach_files(db, ACME, store, [(f.id, SMALL, None)])
    embedder = WordEmbedder()
    embedder.fail_on = "poison"
    worker, _ = ingester(db, data_dir, embedder)
    worker.run_once()
    row = file_row(db, store, f.id)
    assert row.status == "failed" and row.last_error["code"] == "server_error"
    assert "poison" in row.last_error["message"] and chunks_of(db, store, f.id) == []


def test_a_lost_worker_is_resumed_after_the_chunks_it_wrote(db, store, data_dir):
    f = upload(db, data_dir, words(100 * 40))  # 40 chunks: two write batches
    stores.attach_files(db, ACME, store, [(f.id, SMALL, None)])
    first, first_embedder = ingester(db, data_dir, worker_id="first")
    row = claim(db, "first")
    first_embedder.fail_on = "w3200"  # chunk 32: the first batch of 32 is written, then it "dies"
    first._end = lambda *a, **k: None  # a killed process writes nothing more
    first.ingest(row)
    assert len(chunks_of(db, store, f.id)) == 32 and file_row(db, store, f.id).worker_id == "first"
    with db.session() as s:  # its heartbeat goes stale
        s.execute(update(VectorStoreFile).values(heartbeat_at=time.time() - 120))
    second, embedder = ingester(db, data_dir, heartbeat_timeout_s=60, worker_id="second")
    assert second.run_once() is True
    row = file_row(db, store, f.id)
    assert row.status == "completed" and row.attempts == 2 and row.num_chunks == 40
    assert len(embedder.embedded) == 8 and embedder.embedded[0].split()[0] == "w3200"
    assert [c.seq for c in chunks_of(db, store, f.id)] == list(range(40))


def test_a_file_lost_too_often_fails(db, store, data_dir):
    f = upload(db, data_dir, words(10))
    stores.attach_files(db, ACME, store, [(f.id, SMALL, None)])
    for attempt in (1, 2):
        assert claim(db, f"w{attempt}") is not None
        with db.session() as s:  # the worker stops beating
            s.execute(update(VectorStoreFile).values(heartbeat_at=time.time() - 120))
        assert recover_stale(db, 60, max_attempts=2) == [(store.id, f.id)]
        status = file_row(db, store, f.id).status
        assert status == ("in_progress" if attempt == 1 else "failed")
    row = file_row(db, store, f.id)
    assert row.last_error["code"] == "server_error" and "2 time(s)" in row.last_error["message"]


def test_two_workers_never_take_the_same_file(db, store, data_dir):
    ids = [upload(db, data_dir, words(5)).id for _ in range(3)]
    stores.attach_files(db, ACME, store, [(i, SMALL, None) for i in ids])
    claimed = [claim(db, f"w{k}") for k in range(4)]
    assert sorted(r.file_id for r in claimed[:3]) == sorted(ids) and claimed[3] is None


def test_cancelling_a_batch_stops_its_files_and_drops_their_chunks(db, store, data_dir):
    ids = [upload(db, data_dir, words(100 * 40)).id for _ in range(2)]
    batch = stores.create_batch(db, ACME, store, [(i, SMALL, None) for i in ids], "file_ids")
    worker, embedder = ingester(db, data_dir)
    row = claim(db, worker.worker_id)
    original = embedder.embed

    def cancel_after_first_batch(texts):
        out = original(texts)
        if len(embedder.embedded) == 32:
            stores.cancel_batch(db, store, batch.id)
        return out

    embedder.embed = cancel_after_first_batch
    worker.ingest(row)
    assert worker.run_once() is False  # the other file was cancelled while queued
    for file_id in ids:
        assert file_row(db, store, file_id).status == "cancelled"
        assert chunks_of(db, store, file_id) == []
    obj = stores.batch_object(db, stores.get_batch(db, store, batch.id))
    assert obj["status"] == "cancelled" and obj["file_counts"]["cancelled"] == 2
