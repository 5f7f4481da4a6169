"""The adapter registry: immutable PEFT directories under the data dir plus one row each.

`register_adapter` is the one way in (training, import and composition all
call it): it validates the PEFT directory, copies it into
`<data_dir>/adapters/<id>/` through a temporary directory renamed into place,
content-hashes it, and only then writes the `adapters` row. A failure at any
step removes what was written, so no row ever points at missing files and no
half-copied directory is ever visible. Because the row is the registration,
any process sharing the database and data dir (CLI, worker, another server)
sees a new adapter at once.

Ids and names are separate namespaces. Ids are `adapter-` and hex digits,
and no name may take that form, so an id always means that adapter. Names
are unique per tenant: a reference that is not an id means the caller's own
adapter of that name, else the oldest public one, else (the admin only) the
one adapter of that name in any tenant. So tenants cannot shadow each
other's adapters, and a 409 says only that the caller itself used a name.

Visibility: a tenant resolves and lists its own adapters and public ones;
another tenant's adapter does not exist for it (None / 404). The `principal`
arguments are duck-typed (`tenant_id`, `is_admin`, `can_see`) so this layer
does not import the gateway.

Validation reads the adapter's header first: rank against the engine's
limit and shapes against the base before any tensor is read, then finiteness
one tensor at a time; an optional storage quota is checked before the copy
and again in the transaction that adds the row.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ownllm.errors import ConflictError, InvalidRequestError, NotFoundError
from ownllm.formats.peft import (
    ADAPTER_FILES,
    check_base,
    check_finite,
    check_rank,
    read_layout,
)
from ownllm.ids import new_id
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.quota import StorageQuota
from ownllm.store.schema import Adapter, ModelAlias

SOURCES = ("trained", "imported", "composed", "checkpoint")
ID_PREFIX = "adapter-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,511}$")
_ID = re.compile(r"^adapter-[0-9a-f]+$", re.IGNORECASE)


class Viewer(Protocol):
    """What the registry needs of a principal (ownllm.gateway.principal.Principal)."""

    tenant_id: str
    is_admin: bool

    def can_see(self, owner_tenant_id: str, is_public: bool = False) -> bool: ...


@dataclass(frozen=True)
class AdapterRecord:
    """One registered adapter (a row of `adapters`), detached from the session."""

    id: str
    name: str
    tenant_id: str
    base_model: str
    base_sha256: str
    source: str
    rank: int
    size_bytes: int
    sha256: str
    path: str  # relative to the data dir
    created_at: int
    is_public: bool = False
    parents: tuple[str, ...] = ()
    datasets: tuple[dict[str, Any], ...] = ()
    target_modules: tuple[str, ...] = ()
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Adapter) -> AdapterRecord:
        return cls(
            id=row.id,
            name=row.name,
            tenant_id=row.tenant_id,
            base_model=row.base_model,
            base_sha256=row.base_sha256,
            source=row.source,
            rank=row.rank,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            path=row.path,
            created_at=row.created_at,
            is_public=bool(row.is_public),
            parents=tuple(row.parents or ()),
            datasets=tuple(row.datasets or ()),
            target_modules=tuple(row.target_modules or ()),
            hyperparameters=dict(row.hyperparameters or {}),
            metrics=dict(row.metrics or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire object (`object: "adapter"`) used by the API and `--json` output."""
        return {
            "id": self.id,
            "object": "adapter",
            "name": self.name,
            "owned_by": self.tenant_id,
            "base_model": self.base_model,
            "base_sha256": self.base_sha256,
            "parents": list(self.parents),
            "source": self.source,
            "datasets": list(self.datasets),
            "hyperparameters": self.hyperparameters,
            "metrics": self.metrics,
            "rank": self.rank,
            "target_modules": list(self.target_modules),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "is_public": self.is_public,
            "created_at": self.created_at,
        }


def content_sha256(directory: Path) -> str:
    """Hash of the adapter files' names and bytes (the identity of an adapter's content)."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(name.encode() + b"\0")
        with open(directory / name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def is_adapter_id(ref: str) -> bool:
    """True for the id form (`adapter-` and hex digits), which no name may take."""
    return bool(_ID.match(ref))


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            f"invalid adapter name {name!r}: use 1-512 letters, digits and . _ : @ + / -, "
            "starting with a letter or digit",
            param="name",
        )
    if is_adapter_id(name):
        raise InvalidRequestError(
            f"invalid adapter name {name!r}: '{ID_PREFIX}' and hex digits is the form of "
            "adapter ids; choose another name",
            param="name",
        )
    return name


def _name_taken(db: Database, tenant_id: str, name: str) -> bool:
    return own_adapter(db, tenant_id, name) is not None or _is_alias(db, tenant_id, name)


def _is_alias(db: Database, tenant_id: str, name: str) -> bool:
    """Whether the tenant has a model alias `name` (`ownllm.adapters.aliases`)."""
    query = select(ModelAlias.id).where(ModelAlias.tenant_id == tenant_id, ModelAlias.name == name)
    with db.session() as s:
        return s.scalar(query) is not None


def own_adapter(db: Database, tenant_id: str, name: str) -> AdapterRecord | None:
    """The tenant's own adapter named `name` (names are unique per tenant), or None."""
    query = select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
    with db.session() as s:
        row = s.scalars(query).first()
        return AdapterRecord.from_row(row) if row is not None else None


def register_adapter(
    db: Database,
    data_dir: DataDir,
    src_dir: str | Path,
    *,
    name: str,
    tenant_id: str,
    base_model: str,
    base_sha256: str,
    parents: Sequence[str] = (),
    source: str,
    datasets: Iterable[dict[str, Any]] = (),
    hyperparameters: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    is_public: bool = False,
    base_dir: str | Path | None = None,
    max_rank: int | None = None,
    quota: StorageQuota | None = None,
) -> AdapterRecord:
    """Validate the PEFT directory `src_dir`, store an immutable copy and write its row.

    From the header, before any tensor is read: the rank against `max_rank` (the
    engine's limit) and, with `base_dir` (the served base model's HF directory),
    the modules and shapes against the base; then the tensors one at a time.
    Raises AdapterFormatError (400) for a bad adapter, ConflictError (409) when
    the tenant already has an adapter `name`, InsufficientQuotaError (429) past
    `quota`; nothing is left behind on any failure.
    """
    validate_name(name)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    layout = read_layout(src_dir)
    if max_rank is not None:
        check_rank(layout, max_rank)
    if base_dir is not None:
        check_base(layout, base_dir)
    if _name_taken(db, tenant_id, name):
        raise ConflictError(
            f"you already have an adapter or model alias named {name!r}", param="name"
        )
    size_bytes = sum((Path(src_dir) / file).stat().st_size for file in ADAPTER_FILES)
    if quota is not None:
        with db.session() as s:
            quota.check(s, size_bytes)
    check_finite(src_dir, layout)
    # milliseconds first, so ids (the tie-break of listings) sort in registration order
    adapter_id = new_id("adapter")
    final = data_dir.adapters / adapter_id
    with data_dir.atomic_dir(final) as tmp:
        for file in ADAPTER_FILES:
            shutil.copyfile(Path(src_dir) / file, tmp / file)
            os.chmod(tmp / file, 0o444)
        sha256 = content_sha256(tmp)
        size_bytes = sum((tmp / file).stat().st_size for file in ADAPTER_FILES)
    row = Adapter(
        id=adapter_id,
        name=name,
        tenant_id=tenant_id,
        base_model=base_model,
        base_sha256=base_sha256,
        parents=list(parents),
        source=source,
        datasets=[dict(d) for d in datasets],
        hyperparameters=dict(hyperparameters or {}),
        metrics=dict(metrics or {}),
        rank=layout.rank,
        target_modules=layout.target_modules,
        size_bytes=size_bytes,
        sha256=sha256,
        path=data_dir.relative(final),
        is_public=is_public,
        created_at=int(time.time()),
    )
    try:
        with db.session() as s:
            s.add(row)
            s.flush()
            if quota is not None:  # again, counting what was stored meanwhile
                quota.check(s, size_bytes, stored=True)
            record = AdapterRecord.from_row(row)
    except IntegrityError:
        _remove_dir(data_dir, final)
        raise ConflictError(f"you already have an adapter named {name!r}", param="name") from None
    except BaseException:
        _remove_dir(data_dir, final)
        raise
    return record


def _remove_dir(data_dir: DataDir, directory: Path) -> None:
    """Move `directory` out of sight first (one rename), then delete it."""
    if not directory.exists():
        return
    trash = data_dir.tmp / f"deleted-{directory.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(directory, trash)
    except OSError:
        trash = directory
    shutil.rmtree(trash, ignore_errors=True)


def find_row(session: Session, viewer: Viewer, ref: str) -> Adapter | None:
    """The adapter `ref` (an id, or a name) means for the viewer, if it may see one."""
    adapter_id = find_adapter_id(session.connection(), viewer, ref)
    return session.get(Adapter, adapter_id) if adapter_id is not None else None


# what decides which adapter a reference means, and whether the viewer may see it
_WHO_SEES = (Adapter.id, Adapter.tenant_id, Adapter.is_public, Adapter.created_at)


def find_adapter_id(connection: Connection, viewer: Viewer, ref: str) -> str | None:
    """The id of the adapter `ref` (an id, or a name) means for the viewer, if it may see
    one, read in plain SQL (model resolution reads it once a request)."""
    if is_adapter_id(ref):
        found = connection.execute(select(*_WHO_SEES).where(Adapter.id == ref)).first()
        is_visible = found is not None and viewer.can_see(found.tenant_id, found.is_public)
        return found.id if is_visible else None
    query = select(*_WHO_SEES).where(Adapter.name == ref)
    if not viewer.is_admin:
        query = query.where(or_(Adapter.tenant_id == viewer.tenant_id, Adapter.is_public))
    picked = pick_named(list(connection.execute(query)), viewer, ref)
    return picked.id if picked is not None else None


def pick_named(candidates: list, viewer: Viewer, name: str):
    """Of the adapters (rows or records) named `name` the viewer may see, the one the name
    means: its own, else the oldest public one, else for the admin the only one; None if
    none. An admin's name shared by several other tenants is ambiguous (400)."""
    own = [c for c in candidates if c.tenant_id == viewer.tenant_id]
    if own:
        return own[0]
    public = sorted((c for c in candidates if c.is_public), key=lambda c: (c.created_at, c.id))
    if public:
        return public[0]
    if len(candidates) > 1:
        tenants = ", ".join(sorted({c.tenant_id for c in candidates}))
        raise InvalidRequestError(
            f"adapter name {name!r} is used by tenants {tenants}: name the adapter by its id"
        )
    return candidates[0] if candidates else None


def model_names(records: Sequence[AdapterRecord], viewer: Viewer) -> dict[str, str]:
    """Adapter id -> what the viewer sends to use it: its name where the name means it for
    the viewer, else its id (`records` is `list_adapters` for the viewer)."""
    by_name: dict[str, list[AdapterRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    names = {}
    for name, group in by_name.items():
        try:
            meant = pick_named(group, viewer, name)
        except InvalidRequestError:  # shared by several tenants: only ids are unambiguous
            meant = None
        names.update({r.id: name if r is meant else r.id for r in group})
    return names


def resolve_model(
    db: Database, principal: Viewer, name: str, base_sha256: str | None = None
) -> AdapterRecord | None:
    """The adapter `name` (an id, or a name such as `ft:…`) means for the principal (see
    the module docstring); None for unknown names and other tenants' private adapters,
    and, given `base_sha256` (the served base's weights), for adapters of another base."""
    with db.session() as s:
        row = find_row(s, principal, name)
        record = AdapterRecord.from_row(row) if row is not None else None
    if record is None:
        return None
    if base_sha256 is not None and record.base_sha256 != base_sha256:
        return None
    return record


def get_adapter(db: Database, principal: Viewer, ref: str, param: str = "adapter") -> AdapterRecord:
    """Like `resolve_model`, but an unknown or invisible adapter raises NotFoundError (404)."""
    record = resolve_model(db, principal, ref)
    if record is None:
        raise NotFoundError(f"no adapter {ref!r}", param=param)
    return record


def list_adapters(
    db: Database, principal: Viewer, base_model: str | None = None
) -> list[AdapterRecord]:
    """The adapters the principal may use, oldest first (optionally only those of `base_model`)."""
    query = select(Adapter).order_by(Adapter.created_at, Adapter.id)
    if not principal.is_admin:
        query = query.where(or_(Adapter.tenant_id == principal.tenant_id, Adapter.is_public))
    if base_model is not None:
        query = query.where(Adapter.base_model == base_model)
    with db.session() as s:
        return [AdapterRecord.from_row(row) for row in s.scalars(query)]


def delete_adapter(db: Database, data_dir: DataDir, principal: Viewer, ref: str) -> AdapterRecord:
    """Delete the principal's own adapter (the admin: any): its row first, then its files.

    Another tenant's adapter, public or not, is NotFoundError; one that a model alias
    points at is ConflictError (409: the alias's clients would lose their model). The
    caller unloads the returned adapter from a running engine.
    """
    with db.session() as s:
        row = find_row(s, principal, ref)
        if row is None or not (principal.is_admin or row.tenant_id == principal.tenant_id):
            raise NotFoundError(f"no adapter {ref!r}", param="adapter")
        if db.is_postgres:  # a promotion to it waits for this delete, or this for it
            s.execute(select(Adapter.id).where(Adapter.id == row.id).with_for_update())
        query = select(ModelAlias.tenant_id, ModelAlias.name).where(ModelAlias.target == row.id)
        aliases = [f"{t}/{n}" if t != principal.tenant_id else n for t, n in s.execute(query)]
        routers = select(ModelAlias.tenant_id, ModelAlias.name, ModelAlias.router).where(
            ModelAlias.router.is_not(None)
        )
        aliases += [
            f"{t}/{n}" if t != principal.tenant_id else n
            for t, n, router in s.execute(routers)
            if any(v["adapter_id"] == row.id for v in (router or {}).get("versions", ()))
        ]
        if aliases:
            raise ConflictError(
                f"adapter {ref!r} cannot be deleted: model alias {', '.join(sorted(aliases))} "
                "points at it; promote or roll back the alias to another version first",
                param="adapter",
            )
        record = AdapterRecord.from_row(row)
        s.delete(row)
    _remove_dir(data_dir, data_dir.resolve(record.path))
    return record


def adapter_path(db: Database, data_dir: DataDir, adapter_id: str) -> Path | None:
    """The directory of a registered adapter by id (the engine's resolver); None if unknown."""
    with db.session() as s:
        path = s.scalar(select(Adapter.path).where(Adapter.id == adapter_id))
    if path is None:
        return None
    directory = data_dir.resolve(path)
    return directory if directory.is_dir() else None


def make_resolver(db: Database, data_dir: DataDir):
    """`adapter_id -> path or None` for the engine, reading the registry on every call."""

    def resolve(adapter_id: str) -> str | None:
        path = adapter_path(db, data_dir, adapter_id)
        return str(path) if path is not None else None

    return resolve


def sweep_orphans(db: Database, data_dir: DataDir, min_age_s: float = 3600.0) -> list[str]:
    """Delete adapter directories that no row points at (a process died between the copy
    and the row) once older than `min_age_s`, so a registration still in flight in
    another process is never touched. Returns the removed directory names."""
    with db.session() as s:
        known = set(s.scalars(select(Adapter.path)))
    removed = []
    now = time.time()
    for directory in sorted(data_dir.adapters.iterdir()):
        if not directory.is_dir() or data_dir.relative(directory) in known:
            continue
        if now - directory.stat().st_mtime >= min_age_s:
            _remove_dir(data_dir, directory)
            removed.append(directory.name)
    return removed
