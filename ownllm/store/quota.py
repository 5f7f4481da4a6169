"""Per-tenant storage quota: the bytes a tenant's uploaded files and adapters take on disk.

Usage is the sum of `files.bytes` and `adapters.size_bytes` of the tenant, so
every process sharing the database counts the same. Writers check twice:
before they write (or while streaming, stopping at the limit) and again in
the transaction that adds the row, which narrows the window in which two
concurrent writes can together pass the limit to that transaction. A refusal
is `InsufficientQuotaError` (429 `insufficient_quota`) naming used, requested
and limit bytes, and the writer removes what it had written.

Left out: the admin (no quota), per-tenant limits other than the one setting,
and refusing fine-tuning outputs (they count, but a job is not stopped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ownllm.errors import InsufficientQuotaError
from ownllm.store.db import Database
from ownllm.store.schema import Adapter, File

SETTING = "store.tenant_quota_bytes"


class Owner(Protocol):
    tenant_id: str
    is_admin: bool


def used_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's files and adapters, as their rows record them."""
    files = select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
    adapters = select(func.coalesce(func.sum(Adapter.size_bytes), 0)).where(
        Adapter.tenant_id == tenant_id
    )
    return int(session.scalar(files)) + int(session.scalar(adapters))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.2f} MiB"


@dataclass(frozen=True)
class StorageQuota:
    tenant_id: str
    limit_bytes: int

    def used(self, db: Database) -> int:
        with db.session() as s:
            return used_bytes(s, self.tenant_id)

    def exceeded(
        self, used: int, requested: int, *, at_least: bool = False
    ) -> InsufficientQuotaError:
        needs = "at least " if at_least else ""
        return InsufficientQuotaError(
            f"Storage quota exceeded for tenant '{self.tenant_id}': {used:,} bytes "
            f"({_mib(used)}) used, {needs}{requested:,} bytes ({_mib(requested)}) requested, "
            f"limit {self.limit_bytes:,} bytes ({_mib(self.limit_bytes)}). Delete files or "
            f"adapters, or ask the operator to raise {SETTING}.",
        )

    def check(self, session: Session, requested: int, *, stored: bool = False) -> None:
        """Refuse `requested` more bytes; `stored`: its row is already in `session`."""
        used = used_bytes(session, self.tenant_id) - (requested if stored else 0)
        if used + requested > self.limit_bytes:
            raise self.exceeded(used, requested)


def storage_quota(owner: Owner, limit_bytes: int) -> StorageQuota | None:
    """The quota `owner` writes under: None (unlimited) for the admin or a limit of 0."""
    if owner.is_admin or limit_bytes <= 0:
        return None
    return StorageQuota(owner.tenant_id, limit_bytes)
