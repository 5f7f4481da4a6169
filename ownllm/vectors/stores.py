"""Vector stores, their files and file batches in the database, and their OpenAI objects.

Every read takes the principal: another tenant's store, file or batch does not exist
(404, never 403). Attaching a file queues it (`in_progress`, no `worker_id`) for the
ingestion worker (`ownllm.vectors.ingest`); removing one deletes its chunks and bumps the
store's `version` in the same transaction, so no replica's index serves them again.
Counts (`file_counts`, `usage_bytes`) are computed from the file rows when asked for.

A store with `expires_after` ({"anchor": "last_active_at", "days": N}) expires N days
after it was last searched or changed; an expired store still lists and can be deleted,
but a search on it is a 400.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import delete, func, select, update

from ownllm.errors import InvalidRequestError, NotFoundError
from ownllm.ids import new_id
from ownllm.store.db import Database
from ownllm.store.schema import (
    File,
    VectorStore,
    VectorStoreChunk,
    VectorStoreFile,
    VectorStoreFileBatch,
)
from ownllm.store.tenancy import get_visible, visible, visible_rows
from ownllm.vectors.chunking import Chunking

STATUSES = ("in_progress", "completed", "failed", "cancelled")
DAY_S = 86400
MAX_BATCH_FILES = 2000


# -- objects ----------------------------------------------------------------------------------


def _counts(statuses: list[str]) -> dict[str, int]:
    c = Counter(statuses)
    return {**{s: c.get(s, 0) for s in STATUSES}, "total": len(statuses)}


def store_object(db: Database, row: VectorStore, now: float | None = None) -> dict[str, Any]:
    with db.session() as s:
        files = s.execute(
            select(VectorStoreFile.status, VectorStoreFile.usage_bytes).where(
                VectorStoreFile.vector_store_id == row.id
            )
        ).all()
    counts = _counts([f.status for f in files])
    if is_expired(row, now):
        status = "expired"
    else:
        status = "in_progress" if counts["in_progress"] else "completed"
    out = {
        "id": row.id,
        "object": "vector_store",
        "created_at": row.created_at,
        "name": row.name,
        "description": row.description,
        "usage_bytes": sum(f.usage_bytes for f in files),
        "file_counts": counts,
        "status": status,
        "expires_after": row.expires_after,
        "expires_at": row.expires_at,
        "last_active_at": row.last_active_at,
        "metadata": row.metadata_ or {},
        "embedding_model": row.embedding_model,  # ownllm extension
    }
    if out["expires_after"] is None:  # the spec's expires_after is an object or absent
        del out["expires_after"]
    return out


def file_object(row: VectorStoreFile) -> dict[str, Any]:
    return {
        "id": row.file_id,
        "object": "vector_store.file",
        "usage_bytes": row.usage_bytes,
        "created_at": row.created_at,
        "vector_store_id": row.vector_store_id,
        "status": row.status,
        "last_error": row.last_error,
        "chunking_strategy": Chunking(**row.chunking).wire(),
        "attributes": row.attributes or {},
    }


def batch_object(db: Database, row: VectorStoreFileBatch) -> dict[str, Any]:
    with db.session() as s:
        statuses = list(
            s.scalars(select(VectorStoreFile.status).where(VectorStoreFile.batch_id == row.id))
        )
    counts = _counts(statuses)
    if counts["in_progress"]:
        status = "in_progress"
    elif row.is_cancelled:
        status = "cancelled"
    elif counts["total"] and counts["failed"] == counts["total"]:
        status = "failed"
    else:
        status = "completed"
    return {
        "id": row.id,
        "object": "vector_store.files_batch",
        "created_at": row.created_at,
        "vector_store_id": row.vector_store_id,
        "status": status,
        "file_counts": counts,
    }


# -- stores -----------------------------------------------------------------------------------


def is_expired(row: VectorStore, now: float | None = None) -> bool:
    return row.expires_at is not None and (now or time.time()) >= row.expires_at


def _expires_at(expires_after: dict[str, Any] | None, last_active_at: int) -> int | None:
    return last_active_at + expires_after["days"] * DAY_S if expires_after else None


def check_expires_after(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "last_active_at":
        raise InvalidRequestError(
            "Invalid 'expires_after.anchor': the only anchor is 'last_active_at'.",
            param="expires_after.anchor",
        )
    days = value.get("days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        raise InvalidRequestError(
            "Invalid 'expires_after.days': expected an integer from 1 to 365.",
            param="expires_after.days",
        )
    return {"anchor": "last_active_at", "days": days}


def create_store(
    db: Database,
    principal: Any,
    *,
    name: str,
    description: str | None,
    metadata: dict[str, str] | None,
    expires_after: dict[str, Any] | None,
    embedding_model: str,
) -> VectorStore:
    now = int(time.time())
    row = VectorStore(
        id=new_id("vs", sep="_"),
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        name=name,
        description=description,
        embedding_model=embedding_model,
        created_at=now,
        last_active_at=now,
        expires_after=expires_after,
        expires_at=_expires_at(expires_after, now),
        metadata_=metadata,
        version=0,
    )
    with db.session() as s:
        s.add(row)
    return row


def get_store(
    db: Database, principal: Any, store_id: str, param: str = "vector_store_id"
) -> VectorStore:
    message = f"No vector store found with id '{store_id}'."
    return get_visible(db, VectorStore, store_id, principal, message, param)


def touch(db: Database, row: VectorStore) -> None:
    """The store was used: `last_active_at` now, and its expiry moved with it."""
    now = int(time.time())
    with db.session() as s:
        s.execute(
            update(VectorStore)
            .where(VectorStore.id == row.id)
            .values(last_active_at=now, expires_at=_expires_at(row.expires_after, now))
        )


def update_store(
    db: Database, principal: Any, store_id: str, changes: dict[str, Any]
) -> VectorStore:
    row = get_store(db, principal, store_id)
    now = int(time.time())
    values: dict[str, Any] = {"last_active_at": now}
    if "name" in changes:
        values["name"] = changes["name"] or ""
    if "metadata" in changes:
        values["metadata_"] = changes["metadata"]
    expires_after = row.expires_after
    if "expires_after" in changes:
        expires_after = values["expires_after"] = changes["expires_after"]
    values["expires_at"] = _expires_at(expires_after, now)
    with db.session() as s:
        s.execute(update(VectorStore).where(VectorStore.id == row.id).values(**values))
        return s.get(VectorStore, row.id)


def list_stores(
    db: Database, principal: Any, *, after: str | None, before: str | None, limit: int, order: str
) -> tuple[list[VectorStore], bool]:
    """A page of the principal's stores; ids sort in creation order, so they are the cursor."""
    query = visible_rows(select(VectorStore), VectorStore, principal)
    descending = order == "desc"
    if after:
        query = query.where(VectorStore.id < after if descending else VectorStore.id > after)
    if before:
        query = query.where(VectorStore.id > before if descending else VectorStore.id < before)
    if before and not after:  # the page just before `before`: read backwards, then flip
        query = query.order_by(VectorStore.id if descending else VectorStore.id.desc())
        with db.session() as s:
            rows = list(s.scalars(query.limit(limit + 1)))
        return rows[:limit][::-1], len(rows) > limit
    query = query.order_by(VectorStore.id.desc() if descending else VectorStore.id)
    with db.session() as s:
        rows = list(s.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_store(db: Database, principal: Any, store_id: str) -> VectorStore:
    """The store with its files, batches and chunks, in one transaction (its file
    objects stay in /v1/files, as OpenAI keeps them)."""
    row = get_store(db, principal, store_id)
    with db.session() as s:
        for model in (VectorStoreChunk, VectorStoreFile, VectorStoreFileBatch):
            s.execute(delete(model).where(model.vector_store_id == row.id))
        s.execute(delete(VectorStore).where(VectorStore.id == row.id))
    return row


# -- files ------------------------------------------------------------------------------------


def _visible_file(s: Any, principal: Any, file_id: str, param: str) -> File:
    return visible(s.get(File, file_id), principal, f"No such File object: {file_id}", param)


def attach_files(
    db: Database,
    principal: Any,
    store: VectorStore,
    files: list[tuple[str, Chunking, dict[str, Any] | None]],
    *,
    batch_id: str | None = None,
    param: str = "file_id",
) -> list[VectorStoreFile]:
    """Queue each (file id, chunking, attributes) for ingestion into `store`, all or none
    (an unknown file is a 404 naming it). A file already in the store is queued again
    with the new settings, its old chunks dropped, as OpenAI replaces it."""
    now = time.time()
    out = []
    with db.session() as s:
        for i, (file_id, chunking, attributes) in enumerate(files):
            where = param if len(files) == 1 and batch_id is None else f"{param}[{i}]"
            _visible_file(s, principal, file_id, where)
            old = s.get(VectorStoreFile, (store.id, file_id))
            if old is not None:
                s.execute(
                    delete(VectorStoreChunk).where(
                        VectorStoreChunk.vector_store_id == store.id,
                        VectorStoreChunk.file_id == file_id,
                    )
                )
                s.delete(old)
                s.flush()
                _bump(s, store.id)
            row = VectorStoreFile(
                vector_store_id=store.id,
                file_id=file_id,
                tenant_id=store.tenant_id,
                key_id=principal.key_id,
                batch_id=batch_id,
                status="in_progress",
                last_error=None,
                chunking=chunking.to_dict(),
                attributes=attributes,
                usage_bytes=0,
                num_chunks=0,
                num_tokens=0,
                created_at=int(now),
                seq=int(now * 1e6) + i,
                attempts=0,
            )
            s.add(row)
            out.append(row)
    return out


def _bump(s: Any, store_id: str) -> None:
    s.execute(
        update(VectorStore)
        .where(VectorStore.id == store_id)
        .values(version=VectorStore.version + 1)
    )


def get_store_file(db: Database, store: VectorStore, file_id: str) -> VectorStoreFile:
    with db.session() as s:
        row = s.get(VectorStoreFile, (store.id, file_id))
    if row is None:
        raise NotFoundError(
            f"No file found with id '{file_id}' in vector store '{store.id}'.", param="file_id"
        )
    return row


def list_store_files(
    db: Database,
    store: VectorStore,
    *,
    status: str | None,
    after: str | None,
    before: str | None,
    limit: int,
    order: str,
    batch_id: str | None = None,
) -> tuple[list[VectorStoreFile], bool]:
    """A page of a store's (or batch's) files in attach order; the cursor is a file id."""
    query = select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store.id)
    if batch_id is not None:
        query = query.where(VectorStoreFile.batch_id == batch_id)
    if status:
        query = query.where(VectorStoreFile.status == status)
    descending = order == "desc"
    with db.session() as s:
        for cursor, is_after in ((after, True), (before, False)):
            if not cursor:
                continue
            anchor = s.get(VectorStoreFile, (store.id, cursor))
            if anchor is None:
                raise InvalidRequestError(
                    f"No file '{cursor}' in this vector store to page from.",
                    param="after" if is_after else "before",
                )
            forward = is_after != descending  # toward larger seq
            query = query.where(
                VectorStoreFile.seq > anchor.seq if forward else VectorStoreFile.seq < anchor.seq
            )
        backwards = bool(before and not after)
        ascending = (not descending) != backwards
        query = query.order_by(VectorStoreFile.seq if ascending else VectorStoreFile.seq.desc())
        rows = list(s.scalars(query.limit(limit + 1)))
    page = rows[:limit]
    return (page[::-1] if backwards else page), len(rows) > limit


def update_attributes(
    db: Database, store: VectorStore, file_id: str, attributes: dict[str, Any] | None
) -> VectorStoreFile:
    get_store_file(db, store, file_id)
    with db.session() as s:
        s.execute(
            update(VectorStoreFile)
            .where(VectorStoreFile.vector_store_id == store.id, VectorStoreFile.file_id == file_id)
            .values(attributes=attributes)
        )
        return s.get(VectorStoreFile, (store.id, file_id))


def remove_file(db: Database, store: VectorStore, file_id: str) -> None:
    """Detach a file: its row and chunks go, and the store's version moves on."""
    get_store_file(db, store, file_id)
    with db.session() as s:
        s.execute(
            delete(VectorStoreChunk).where(
                VectorStoreChunk.vector_store_id == store.id, VectorStoreChunk.file_id == file_id
            )
        )
        s.execute(
            delete(VectorStoreFile).where(
                VectorStoreFile.vector_store_id == store.id, VectorStoreFile.file_id == file_id
            )
        )
        _bump(s, store.id)


def file_chunks(db: Database, store: VectorStore, file_id: str) -> list[str]:
    """The texts of a completed file's chunks, in order."""
    row = get_store_file(db, store, file_id)
    if row.status != "completed":
        return []
    with db.session() as s:
        return list(
            s.scalars(
                select(VectorStoreChunk.text)
                .where(
                    VectorStoreChunk.vector_store_id == store.id,
                    VectorStoreChunk.file_id == file_id,
                )
                .order_by(VectorStoreChunk.seq)
            )
        )


# -- batches ----------------------------------------------------------------------------------


def create_batch(
    db: Database,
    principal: Any,
    store: VectorStore,
    files: list[tuple[str, Chunking, dict[str, Any] | None]],
    param: str,
) -> VectorStoreFileBatch:
    batch = VectorStoreFileBatch(
        id=new_id("vsfb", sep="_"),
        vector_store_id=store.id,
        tenant_id=store.tenant_id,
        created_at=int(time.time()),
        is_cancelled=False,
    )
    with db.session() as s:
        s.add(batch)
    try:
        attach_files(db, principal, store, files, batch_id=batch.id, param=param)
    except BaseException:
        with db.session() as s:
            s.execute(delete(VectorStoreFileBatch).where(VectorStoreFileBatch.id == batch.id))
        raise
    return batch


def get_batch(db: Database, store: VectorStore, batch_id: str) -> VectorStoreFileBatch:
    with db.session() as s:
        row = s.get(VectorStoreFileBatch, batch_id)
    if row is None or row.vector_store_id != store.id:
        raise NotFoundError(f"No file batch found with id '{batch_id}'.", param="batch_id")
    return row


def cancel_batch(db: Database, store: VectorStore, batch_id: str) -> VectorStoreFileBatch:
    """Stop a batch: its files still queued or being ingested become `cancelled` and lose
    their partial chunks (a worker on one sees it at its next write and stops)."""
    from ownllm.vectors.ingest import meter

    batch = get_batch(db, store, batch_id)
    with db.session() as s:
        pending = list(
            s.scalars(
                select(VectorStoreFile.file_id).where(
                    VectorStoreFile.batch_id == batch.id, VectorStoreFile.status == "in_progress"
                )
            )
        )
        for file_id in pending:
            key = (VectorStoreFile.vector_store_id == store.id, VectorStoreFile.file_id == file_id)
            done = s.execute(
                update(VectorStoreFile)
                .where(*key, VectorStoreFile.status == "in_progress")
                .values(status="cancelled", worker_id=None, heartbeat_at=None)
            ).rowcount
            if not done:
                continue  # finished meanwhile: it stays as it ended
            s.execute(
                delete(VectorStoreChunk).where(
                    VectorStoreChunk.vector_store_id == store.id,
                    VectorStoreChunk.file_id == file_id,
                )
            )
            meter(s, s.get(VectorStoreFile, (store.id, file_id)), store.embedding_model)
        s.execute(
            update(VectorStoreFileBatch)
            .where(VectorStoreFileBatch.id == batch.id)
            .values(is_cancelled=True)
        )
        return s.get(VectorStoreFileBatch, batch.id)


def completed_files(db: Database, store_ids: list[str]) -> dict[tuple[str, str], tuple[str, dict]]:
    """(store id, file id) -> (filename, attributes) of every completed file of the stores."""
    with db.session() as s:
        rows = s.execute(
            select(
                VectorStoreFile.vector_store_id,
                VectorStoreFile.file_id,
                VectorStoreFile.attributes,
                File.filename,
            )
            .outerjoin(File, File.id == VectorStoreFile.file_id)
            .where(
                VectorStoreFile.vector_store_id.in_(store_ids),
                VectorStoreFile.status == "completed",
            )
        ).all()
    return {(r[0], r[1]): (r[3] or r[1], r[2] or {}) for r in rows}


def num_chunks(db: Database, store_id: str) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).where(VectorStoreChunk.vector_store_id == store_id))
