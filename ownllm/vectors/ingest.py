"""The ingestion worker: claim a queued vector store file, extract, chunk, embed, store.

Queued files are `vector_store_files` rows `in_progress` with no `worker_id`. Claiming
is the fine-tuning queue's way (`ownllm.tuning.jobs`): PostgreSQL selects
`FOR UPDATE SKIP LOCKED`, SQLite updates `WHERE worker_id IS NULL` and checks the row
count, so two workers never take one file; the next file is the oldest of the tenant
with the fewest files being ingested, so one tenant's 2,000-file batch does not hold the
others back.

Chunks are embedded and written 32 at a time; each write is one transaction that first
renews the worker's heartbeat on the row, conditional on still owning it `in_progress`.
So a file cancelled, removed or taken over meanwhile stops at the next write, with
nothing written after it; and a worker killed mid-file leaves whole batches behind.
Chunking is deterministic, so the worker that takes the file over (after
`heartbeat_timeout_s`) skips the chunks already there and embeds only the rest. A file
whose worker was lost `max_attempts` times fails with `server_error`.

Each file that ends writes one usage-ledger row (endpoint `vector_stores.files`, the
tokens embedded, the key that attached it) in the transaction that ends it.

Left out: charging ingestion against monthly token budgets (the ledger has it), OCR.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import aliased

from ownllm import ids
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import (
    File,
    UsageRecord,
    VectorStore,
    VectorStoreChunk,
    VectorStoreFile,
    usage_day,
)
from ownllm.vectors.chunking import Chunking, chunk_text
from ownllm.vectors.extract import ExtractError, extract_text

log = logging.getLogger("ownllm.vectors")

USAGE_ENDPOINT = "vector_stores.files"
EMBED_BATCH = 32
_USAGE_STATUS = {"completed": "ok", "failed": "error", "cancelled": "cancelled"}


class Embedder(Protocol):
    """What ingestion needs of an embedding model (`ownllm.models.embedding.EmbeddingModel`)."""

    dimensions: int

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class IngestFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def meter(session: Any, row: VectorStoreFile | None, model: str) -> None:
    """The ledger row of a file whose ingestion just ended, in the transaction that ended it."""
    if row is None or not row.num_tokens:
        return
    now = time.time()
    session.add(
        UsageRecord(
            request_id=f"{row.vector_store_id}/{row.file_id}",
            created_at=now,
            day=usage_day(now),
            tenant_id=row.tenant_id,
            key_id=row.key_id,
            endpoint=USAGE_ENDPOINT,
            model=model,
            prompt_tokens=min(row.num_tokens, 2**31 - 1),
            status=_USAGE_STATUS[row.status],
            error_code=(row.last_error or {}).get("code"),
        )
    )


def _key(store_id: str, file_id: str) -> tuple:
    return (VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id)


def _next_queued():
    f, other = VectorStoreFile, aliased(VectorStoreFile)
    num_running = (
        select(func.count())
        .where(
            other.tenant_id == f.tenant_id,
            other.status == "in_progress",
            other.worker_id.is_not(None),
        )
        .scalar_subquery()
    )
    return (
        select(f.vector_store_id, f.file_id)
        .where(f.status == "in_progress", f.worker_id.is_(None))
        .order_by(num_running, f.seq)
        .limit(1)
    )


def claim(db: Database, worker_id: str) -> VectorStoreFile | None:
    """Take the next queued file for `worker_id`, or None when none is queued."""

    def take(s: Any, picked: Any) -> VectorStoreFile | None:
        done = s.execute(
            update(VectorStoreFile)
            .where(
                *_key(*picked),
                VectorStoreFile.status == "in_progress",
                VectorStoreFile.worker_id.is_(None),
            )
            .values(
                worker_id=worker_id,
                heartbeat_at=time.time(),
                attempts=VectorStoreFile.attempts + 1,
            )
        )
        return s.get(VectorStoreFile, tuple(picked)) if done.rowcount == 1 else None

    return db.claim_first(_next_queued(), VectorStoreFile, take)


def recover_stale(db: Database, timeout_s: float, max_attempts: int) -> list[tuple[str, str]]:
    """Requeue (or fail, after `max_attempts`) files whose worker stopped beating."""
    cutoff = time.time() - timeout_s
    with db.session() as s:
        stale = s.execute(
            select(
                VectorStoreFile.vector_store_id,
                VectorStoreFile.file_id,
                VectorStoreFile.heartbeat_at,
                VectorStoreFile.attempts,
            ).where(
                VectorStoreFile.status == "in_progress",
                VectorStoreFile.worker_id.is_not(None),
                VectorStoreFile.heartbeat_at < cutoff,
            )
        ).all()
    recovered = []
    for store_id, file_id, beat, attempts in stale:
        retry = attempts < max_attempts
        values: dict[str, Any] = {"worker_id": None, "heartbeat_at": None}
        if not retry:
            values.update(
                status="failed",
                last_error={
                    "code": "server_error",
                    "message": f"The worker ingesting this file stopped {attempts} time(s); "
                    "giving up. Attach the file again to retry.",
                },
            )
        with db.session() as s:
            done = s.execute(
                update(VectorStoreFile)
                .where(
                    *_key(store_id, file_id),
                    VectorStoreFile.status == "in_progress",
                    VectorStoreFile.heartbeat_at == beat,
                )
                .values(**values)
            ).rowcount
            if done and not retry:
                _drop_chunks(s, store_id, file_id)
                store = s.get(VectorStore, store_id)
                meter(s, s.get(VectorStoreFile, (store_id, file_id)), store.embedding_model)
        if done:
            recovered.append((store_id, file_id))
    return recovered


def _drop_chunks(s: Any, store_id: str, file_id: str) -> None:
    s.execute(
        delete(VectorStoreChunk).where(
            VectorStoreChunk.vector_store_id == store_id, VectorStoreChunk.file_id == file_id
        )
    )


class Ingester:
    """One ingestion worker: `run_once` ingests one queued file, `run_forever` polls.

    `embedder` is called once, on the first file, for the embedding model (a few seconds
    to load MiniLM); `stop` ends the work between batches and hands the file back."""

    def __init__(
        self,
        db: Database,
        data_dir: DataDir,
        embedder: Callable[[], Embedder],
        *,
        heartbeat_timeout_s: float = 60.0,
        max_attempts: int = 3,
        poll_interval_s: float = 2.0,
        worker_id: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.db, self.data_dir, self._make_embedder = db, data_dir, embedder
        self.heartbeat_timeout_s, self.max_attempts = heartbeat_timeout_s, max_attempts
        self.poll_interval_s = poll_interval_s
        self.worker_id = worker_id or ids.worker_id()
        self.stop = stop or threading.Event()
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._make_embedder()
        return self._embedder

    def run_forever(self) -> None:
        log.debug("ingestion worker %s ready", self.worker_id)
        while not self.stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # a database hiccup: the loop lives on
                log.exception("ingestion worker %s: claiming failed", self.worker_id)
                busy = False
            if not busy:
                self.stop.wait(self.poll_interval_s)

    def run_once(self) -> bool:
        """Recover stale files, then claim and ingest one; False when none was queued."""
        recover_stale(self.db, self.heartbeat_timeout_s, self.max_attempts)
        row = claim(self.db, self.worker_id)
        if row is None:
            return False
        self.ingest(row)
        return True

    def ingest(self, row: VectorStoreFile) -> None:
        try:
            self._ingest(row)
        except IngestFailed as e:
            self._end(row, "failed", {"code": e.code, "message": e.message})
        except Exception as e:  # the file fails, the worker lives on
            log.exception("ingesting %s into %s failed", row.file_id, row.vector_store_id)
            self._end(
                row, "failed", {"code": "server_error", "message": f"{type(e).__name__}: {e}"}
            )

    def _ingest(self, row: VectorStoreFile) -> None:
        from ownllm.tuning.files import file_path

        with self.db.session() as s:
            store = s.get(VectorStore, row.vector_store_id)
            file = s.get(File, row.file_id)
        if store is None:
            return  # deleted meanwhile, with this row
        if file is None:
            raise IngestFailed("invalid_file", f"The file {row.file_id} no longer exists.")
        try:
            data = file_path(self.data_dir, file).read_bytes()
        except OSError as e:
            raise IngestFailed(
                "invalid_file", f"The file {row.file_id} cannot be read: {e.strerror}."
            ) from None
        try:
            text = extract_text(data, file.filename)
        except ExtractError as e:
            raise IngestFailed(e.code, e.message) from None
        embedder = self.embedder
        chunks = chunk_text(text, embedder.token_spans(text), Chunking(**row.chunking))
        if not chunks:
            raise IngestFailed("invalid_file", f"The file {file.filename!r} contains no text.")
        with self.db.session() as s:
            num_done = s.scalar(
                select(func.count()).where(
                    VectorStoreChunk.vector_store_id == row.vector_store_id,
                    VectorStoreChunk.file_id == row.file_id,
                )
            )
        for start in range(num_done, len(chunks), EMBED_BATCH):
            if self.stop.is_set():
                self._release(row)
                return
            batch = chunks[start : start + EMBED_BATCH]
            vectors = embedder.embed([t for t, _ in batch])
            if not self._write(row, start, batch, vectors):
                return  # cancelled, removed or taken over: the new owner decides
        usage = sum(len(t.encode()) for t, _ in chunks) + len(chunks) * embedder.dimensions * 4
        self._end(row, "completed", None, usage_bytes=usage, num_chunks=len(chunks))

    def _write(self, row: VectorStoreFile, start: int, batch, vectors) -> bool:
        """Write one batch of chunks, if this worker still owns the file."""
        matrix = np.asarray(vectors, dtype="<f4")  # [B, D]
        with self.db.session() as s:
            owned = s.execute(
                update(VectorStoreFile)
                .where(*self._owned(row))
                .values(
                    heartbeat_at=time.time(),
                    num_tokens=VectorStoreFile.num_tokens + sum(n for _, n in batch),
                )
            ).rowcount
            if not owned:
                return False
            s.add_all(
                VectorStoreChunk(
                    vector_store_id=row.vector_store_id,
                    file_id=row.file_id,
                    tenant_id=row.tenant_id,
                    seq=start + i,
                    text=text,
                    num_tokens=num_tokens,
                    vector=matrix[i].tobytes(),
                )
                for i, (text, num_tokens) in enumerate(batch)
            )
        return True

    def _owned(self, row: VectorStoreFile) -> tuple:
        return (
            *_key(row.vector_store_id, row.file_id),
            VectorStoreFile.worker_id == self.worker_id,
            VectorStoreFile.status == "in_progress",
        )

    def _release(self, row: VectorStoreFile) -> None:
        with self.db.session() as s:
            s.execute(
                update(VectorStoreFile)
                .where(*self._owned(row))
                .values(worker_id=None, heartbeat_at=None)
            )

    def _end(self, row: VectorStoreFile, status: str, error: dict | None, **values: Any) -> None:
        """Completed or failed, if still this worker's: the store's version moves on (or the
        partial chunks go) and the ledger row is written, in one transaction."""
        with self.db.session() as s:
            done = s.execute(
                update(VectorStoreFile)
                .where(*self._owned(row))
                .values(
                    status=status, last_error=error, worker_id=None, heartbeat_at=None, **values
                )
            ).rowcount
            if not done:
                return
            if status == "completed":
                s.execute(
                    update(VectorStore)
                    .where(VectorStore.id == row.vector_store_id)
                    .values(version=VectorStore.version + 1)
                )
            else:
                _drop_chunks(s, row.vector_store_id, row.file_id)
            store = s.get(VectorStore, row.vector_store_id)
            ended = s.get(VectorStoreFile, (row.vector_store_id, row.file_id))
            meter(s, ended, store.embedding_model if store else "")
        if status == "failed":
            log.warning(
                "file %s in %s failed: %s", row.file_id, row.vector_store_id, error["message"]
            )


def shipped_embedder() -> Embedder:
    """The shipped all-MiniLM-L6-v2 (ModelLoadError when its wheel is missing)."""
    from ownllm.models.embedding import EmbeddingModel

    return EmbeddingModel.load()
