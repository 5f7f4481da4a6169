"""Tenants and API keys: create, list, update limits, revoke.

A key is shown once, at creation (`CreatedKey.secret`); the database keeps
its SHA-256 (see `ownllm.gateway.auth`) and a short prefix for listings.
Creating a key for an unknown tenant creates the tenant. Keys are revoked,
never deleted, so the usage ledger always names a key that exists.

Every function takes `tenant_id=None` for the admin view (all tenants) or a
tenant id for that tenant's own view, where another tenant's key is a
NotFoundError exactly like a key that does not exist.

Tenant names never take the admin's identity: `@admin` (`ADMIN_TENANT`) is not a
name at all, and `default`, the admin's tenant id before it, is refused for a new
tenant, since an older database keeps what the admin stored under that id.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from ownllm.errors import ConflictError, InvalidRequestError, NotFoundError
from ownllm.gateway.auth import generate_key, hash_key
from ownllm.gateway.principal import ALL_SCOPES, NO_LIMITS, Limits
from ownllm.ids import new_id
from ownllm.store.schema import ApiKey, Tenant

TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_TENANTS = frozenset({"default"})  # compared case-folded
_PREFIX_LEN = 11  # "sk-" + 8 characters


@dataclass(frozen=True)
class TenantInfo:
    id: str
    created_at: int
    limits: Limits

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "tenant",
            "id": self.id,
            "created_at": self.created_at,
            **asdict(self.limits),
        }


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    limits: Limits
    created_at: int
    last_used_at: int | None
    revoked_at: int | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("limits"))
        out["scopes"] = list(self.scopes)
        out["redacted_value"] = self.prefix + "…"
        return {"object": "api_key", **out}


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    secret: str  # shown once


def validate_tenant_id(tenant_id: str, param: str = "tenant") -> str:
    if not isinstance(tenant_id, str) or not TENANT_RE.match(tenant_id):
        raise InvalidRequestError(
            f"Invalid tenant name {tenant_id!r}: 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit.",
            param=param,
        )
    return tenant_id


def _refuse_reserved(tenant_id: str) -> None:
    if tenant_id.casefold() in RESERVED_TENANTS:
        raise InvalidRequestError(
            f"Tenant name {tenant_id!r} is reserved: it was the admin's own tenant id, and "
            "an older database may keep the admin's stored completions and files under it. "
            "Pick another name.",
            param="tenant",
        )


def validate_scopes(scopes: Any) -> tuple[str, ...]:
    if scopes is None:
        return tuple(sorted(ALL_SCOPES))
    items = [s.strip() for s in scopes.split(",")] if isinstance(scopes, str) else list(scopes)
    unknown = [s for s in items if s not in ALL_SCOPES]
    if unknown or not items:
        what = f"Unknown scope {unknown[0]!r}." if unknown else "No scope given."
        known = ", ".join(sorted(ALL_SCOPES))
        raise InvalidRequestError(f"{what} Known scopes: {known}.", param="scopes")
    return tuple(sorted(set(items)))


def validate_limits(limits: Limits) -> Limits:
    for name, value in asdict(limits).items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidRequestError(
                f"Invalid {name} {value!r}: a positive integer, or null for no limit.", param=name
            )
    return limits


def _tenant_info(row: Tenant) -> TenantInfo:
    return TenantInfo(
        row.id, row.created_at, Limits(row.rpm, row.tpm, row.max_concurrent, row.monthly_tokens)
    )


def _key_info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes or ()),
        limits=Limits(row.rpm, row.tpm, row.max_concurrent, row.monthly_tokens),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _set_limits(row: Tenant | ApiKey, limits: Limits) -> None:
    row.rpm, row.tpm = limits.rpm, limits.tpm
    row.max_concurrent, row.monthly_tokens = limits.max_concurrent, limits.monthly_tokens


def create_tenant(
    db: Any, tenant_id: str, limits: Limits = NO_LIMITS, *, exist_ok: bool = False
) -> TenantInfo:
    validate_tenant_id(tenant_id)
    validate_limits(limits)
    with db.session() as session:
        row = session.get(Tenant, tenant_id)
        if row is not None:
            if not exist_ok:
                raise ConflictError(f"Tenant '{tenant_id}' already exists.", param="tenant")
            return _tenant_info(row)  # a tenant `default` made before the name was reserved
        _refuse_reserved(tenant_id)
        row = Tenant(id=tenant_id, created_at=int(time.time()), capture_default=False)
        _set_limits(row, limits)
        session.add(row)
        session.flush()
        return _tenant_info(row)


def get_tenant(db: Any, tenant_id: str) -> TenantInfo:
    with db.session() as session:
        row = session.get(Tenant, tenant_id)
        if row is None:
            raise NotFoundError(f"No tenant named '{tenant_id}'.", param="tenant")
        return _tenant_info(row)


def list_tenants(db: Any) -> list[TenantInfo]:
    with db.session() as session:
        return [_tenant_info(r) for r in session.scalars(select(Tenant).order_by(Tenant.id))]


def set_tenant_limits(db: Any, tenant_id: str, limits: Limits) -> TenantInfo:
    validate_limits(limits)
    with db.session() as session:
        row = session.get(Tenant, tenant_id)
        if row is None:
            raise NotFoundError(f"No tenant named '{tenant_id}'.", param="tenant")
        _set_limits(row, limits)
        return _tenant_info(row)


# What `ownllm keys create` and POST /v1/admin/keys give a key unless told otherwise, so
# a forgotten flag is not an unlimited key: a request a second sustained (rpm 60); 100k
# tokens a minute, about a dozen requests that leave max_tokens out on an 8k context,
# since admission counts prompt + n × max_tokens; 4 requests in flight, so one key holds
# at most 1/16 of the engine's 64 batch slots. No monthly budget: that is a business
# decision, made per tenant or key.
DEFAULT_KEY_LIMITS = Limits(rpm=60, tpm=100_000, max_concurrent=4)


def create_key(
    db: Any,
    tenant_id: str,
    name: str,
    *,
    scopes: Any = None,
    limits: Limits = NO_LIMITS,
) -> CreatedKey:
    """Create a key (and its tenant when new). The secret is in the result only.

    `limits` are exactly the key's; the CLI and the admin route start from
    `DEFAULT_KEY_LIMITS` and pass what the operator changed."""
    validate_tenant_id(tenant_id)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequestError("A key needs a name of 1-200 characters.", param="name")
    scope_list = validate_scopes(scopes)
    validate_limits(limits)
    create_tenant(db, tenant_id, exist_ok=True)
    secret = generate_key()
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name.strip(),
        prefix=secret[:_PREFIX_LEN],
        key_hash=hash_key(secret),
        scopes=list(scope_list),
        created_at=int(time.time()),
    )
    _set_limits(row, limits)
    with db.session() as session:
        session.add(row)
        session.flush()
        return CreatedKey(_key_info(row), secret)


def _visible_key(session: Any, key_id: str, tenant_id: str | None) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
    return row


def get_key(db: Any, key_id: str, tenant_id: str | None = None) -> KeyInfo:
    with db.session() as session:
        return _key_info(_visible_key(session, key_id, tenant_id))


def list_keys(
    db: Any, tenant_id: str | None = None, *, include_revoked: bool = True
) -> list[KeyInfo]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    with db.session() as session:
        return [_key_info(r) for r in session.scalars(query)]


def revoke_key(db: Any, key_id: str, tenant_id: str | None = None) -> KeyInfo:
    """Revoke a key (idempotent: revoking twice keeps the first time)."""
    with db.session() as session:
        row = _visible_key(session, key_id, tenant_id)
        if row.revoked_at is None:
            row.revoked_at = int(time.time())
        return _key_info(row)


def set_key_limits(db: Any, key_id: str, limits: Limits, tenant_id: str | None = None) -> KeyInfo:
    validate_limits(limits)
    with db.session() as session:
        row = _visible_key(session, key_id, tenant_id)
        _set_limits(row, limits)
        return _key_info(row)
