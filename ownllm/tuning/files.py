"""Stored files (`file-…`): bytes under `<data_dir>/files/<id>`, one `files` row each.

Uploads are written in chunks to a temporary file while their sha256 is
computed and their size checked against the cap; the file is renamed into
place and its row written only when complete, so a failed or oversized
upload leaves nothing behind. Rows are tenant-scoped: another tenant's file
does not exist (404).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from ownllm.errors import PayloadTooLargeError
from ownllm.ids import new_id
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.quota import StorageQuota
from ownllm.store.schema import File
from ownllm.store.tenancy import get_visible, visible_rows

PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "user_data", "evals")


def file_object(row: File) -> dict:
    """The OpenAI file object. Deprecated `status_details` is left out: OpenAI's answers
    carry it as null, but its spec allows only a string, and the official client reads
    a missing one as None."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "sha256": row.sha256,
    }


class PartialFile:
    """A file being written under tmp/: `write` chunks, then `commit` renames it into place.

    With a `quota` (the tenant had `used_bytes` when the upload began) a write that
    passes it stops the upload with 429, and `commit` checks again with its row."""

    def __init__(
        self,
        data_dir: DataDir,
        max_bytes: int,
        quota: StorageQuota | None = None,
        used_bytes: int = 0,
    ) -> None:
        self.data_dir, self.max_bytes = data_dir, max_bytes
        self.quota, self.used_bytes = quota, used_bytes
        self.id = new_id("file")  # sorts by creation
        self.tmp = data_dir.tmp / f"{self.id}.part"
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")  # noqa: SIM115 (closed in commit/discard)
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise PayloadTooLargeError(
                f"The file is larger than the {self.max_bytes:,}-byte limit "
                "(setting tuning.max_file_bytes).",
                param="file",
            )
        if self.quota is not None and self.used_bytes + self.size > self.quota.limit_bytes:
            self.discard()
            raise self.quota.exceeded(self.used_bytes, self.size, at_least=True)
        self.digest.update(chunk)
        self._f.write(chunk)

    def discard(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self, db: Database, tenant_id: str, filename: str, purpose: str) -> File:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        final = self.data_dir.files / self.id
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.tmp, final)
        row = File(
            id=self.id,
            tenant_id=tenant_id,
            filename=filename[:512],
            purpose=purpose,
            bytes=self.size,
            sha256=self.digest.hexdigest(),
            path=self.data_dir.relative(final),
            status="processed",
            created_at=int(time.time()),
        )
        try:
            with db.session() as s:
                s.add(row)
                if self.quota is not None:  # again, counting what was stored meanwhile
                    s.flush()
                    self.quota.check(s, self.size, stored=True)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return row


def save_bytes(
    db: Database,
    data_dir: DataDir,
    chunks: Iterable[bytes],
    *,
    tenant_id: str,
    filename: str,
    purpose: str,
) -> File:
    part = PartialFile(data_dir, 1 << 62)
    try:
        for chunk in chunks:
            part.write(chunk)
    except BaseException:
        part.discard()
        raise
    return part.commit(db, tenant_id, filename, purpose)


def get_file(db: Database, principal, file_id: str, param: str = "file_id") -> File:
    """The file if the principal may see it; NotFoundError otherwise (never 403)."""
    return get_visible(db, File, file_id, principal, f"No such File object: {file_id}", param)


def file_path(data_dir: DataDir, row: File) -> Path:
    return data_dir.resolve(row.path)


def list_files(
    db: Database,
    principal,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: str,
) -> tuple[list[File], bool]:
    query = visible_rows(select(File), File, principal)
    if purpose:
        query = query.where(File.purpose == purpose)
    # ids sort in creation order (see PartialFile), so the id is the cursor
    descending = order == "desc"
    if after:
        query = query.where(File.id < after if descending else File.id > after)
    query = query.order_by(File.id.desc() if descending else File.id)
    with db.session() as s:
        rows = list(s.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(db: Database, data_dir: DataDir, principal, file_id: str) -> File:
    row = get_file(db, principal, file_id)
    with db.session() as s:
        s.delete(s.get(File, file_id))
    file_path(data_dir, row).unlink(missing_ok=True)
    return row
