"""Authentication: `Authorization: Bearer sk-…` → `Principal` (tenant, scopes, limits).

Keys are `sk-` + 32 random bytes (`secrets.token_urlsafe`). Only their
SHA-256 is stored: a slow password hash (bcrypt, argon2) protects guessable
passwords, but a 256-bit random key has no dictionary to try, so one SHA-256
is as strong and keeps the lookup an indexed equality. The stored and the
computed digest are compared with `hmac.compare_digest` anyway, and so is
the admin key (`OWNLLM_ADMIN_KEY`, config `auth.admin_key`).

Open development mode — every request is the admin (tenant `@admin`) with all
scopes, whatever key it sends — holds only while the server listens on
loopback and no key exists (no API key row, revoked ones included, and no
admin key); a key created by another process (`ownllm keys create`) ends it
within a second. `startup_problem` is what `ownllm serve` checks so that a server
on any other address refuses to start without keys.

Verified keys are cached in memory for `auth.key_cache_seconds`; a revoke in
this process takes effect at once, one in another process or replica within
that time. Left out: OAuth/OIDC, key expiry dates, per-route IP allow lists.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ownllm.errors import AuthenticationError, PermissionDeniedError
from ownllm.gateway.principal import (
    ADMIN_TENANT,
    ALL_SCOPES,
    OPEN_DEV_PRINCIPAL,
    Limits,
    Principal,
    is_loopback,
)

KEY_PREFIX = "sk-"
ADMIN_PRINCIPAL = Principal(tenant_id=ADMIN_TENANT, key_id="admin", is_admin=True)
CREATE_KEY_HINT = "ownllm keys create --tenant NAME --name NAME"
_LAST_USED_EVERY_S = 60
_CACHE_MAX = 10_000
_OPEN_RECHECK_S = 1.0  # in open mode, a key created by another process closes it within this
PRINCIPAL_SCOPE_KEY = "ownllm.principal"  # where the body gate leaves the resolved principal


def generate_key() -> str:
    """A new secret key: shown once to its owner, never stored."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def any_key_exists(db: Any) -> bool:
    """True when at least one API key row exists (revoked keys count: a
    revoked last key must not reopen the server)."""
    from sqlalchemy import select

    from ownllm.store.schema import ApiKey

    with db.session() as session:
        return session.execute(select(ApiKey.id).limit(1)).first() is not None


def startup_problem(db: Any, host: str, admin_key: str) -> str | None:
    """Why the server must not start on `host`, or None when it may."""
    if is_loopback(host) or admin_key or (db is not None and any_key_exists(db)):
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach it could use it. "
        f"Create a key first (`{CREATE_KEY_HINT}`), or set OWNLLM_ADMIN_KEY, "
        "or listen on 127.0.0.1 for open development mode."
    )


@dataclass
class _Cached:
    principal: Principal | None  # None: the key was refused (never kept in the cache)
    message: str
    expires: float


class Authenticator:
    """Resolves bearer tokens to principals; one per app (the Gateway's)."""

    def __init__(
        self,
        db: Any,
        *,
        admin_key: str = "",
        loopback: bool = True,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self.loopback = loopback
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._has_keys = bool(admin_key)  # latches True: keys are revoked, never deleted
        self._keys_checked_at = -math.inf
        self._cache: dict[str, _Cached] = {}

    def has_keys(self) -> bool:
        """Whether any key exists; re-checked at most every `_OPEN_RECHECK_S` until one does."""
        if not self._has_keys and self.db is not None:
            now = self._clock()
            if now - self._keys_checked_at >= _OPEN_RECHECK_S:
                self._has_keys = any_key_exists(self.db)
                self._keys_checked_at = now
        return self._has_keys

    def is_open(self) -> bool:
        """Open development mode: loopback and no key at all."""
        return self.loopback and not self.has_keys()

    def cached(self, token: str | None) -> Principal | None:
        """The principal for `token` without touching the database, when known."""
        if not self._has_keys:
            recently = self._clock() - self._keys_checked_at < _OPEN_RECHECK_S
            return OPEN_DEV_PRINCIPAL if self.loopback and recently else None
        if not token:
            return None
        entry = self._cache.get(hash_key(token))
        if entry is None or entry.expires < self._clock():
            return None
        return entry.principal

    def resolve(self, token: str | None) -> Principal:
        """Check a token (blocking: may query the database). Raises AuthenticationError."""
        if self.is_open():
            return OPEN_DEV_PRINCIPAL
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Pass it as 'Authorization: Bearer sk-…'; "
                f"an admin creates one with `{CREATE_KEY_HINT}`."
            )
        digest = hash_key(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return ADMIN_PRINCIPAL
        now = self._clock()
        entry = self._cache.get(digest)
        if entry is None or entry.expires < now:
            entry = self._lookup(digest, now)
            if self.cache_seconds > 0 and entry.principal is not None:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = entry
        if entry.principal is None:
            raise AuthenticationError(entry.message)
        self._has_keys = True  # a key resolved: from now on `cached` may answer alone
        return entry.principal

    def forget(self) -> None:
        """Drop cached keys and re-check for keys now (after a create, revoke or limit
        change in this process)."""
        self._cache.clear()
        self._keys_checked_at = -math.inf

    def _lookup(self, digest: str, now: float) -> _Cached:
        from sqlalchemy import select, update

        from ownllm.store.schema import ApiKey, Tenant

        expires = now + self.cache_seconds
        with self.db.session() as session:
            row = session.execute(
                select(ApiKey, Tenant).join(Tenant).where(ApiKey.key_hash == digest)
            ).first()
            if row is None or not hmac.compare_digest(row[0].key_hash, digest):
                return _Cached(None, "Incorrect API key provided.", expires)
            key, tenant = row
            if key.revoked_at is not None:
                return _Cached(None, "This API key has been revoked.", expires)
            wall = int(time.time())
            if key.last_used_at is None or wall - key.last_used_at >= _LAST_USED_EVERY_S:
                session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=wall))
            principal = Principal(
                tenant_id=key.tenant_id,
                key_id=key.id,
                scopes=frozenset(key.scopes or ()) & ALL_SCOPES,
                key_limits=Limits(key.rpm, key.tpm, key.max_concurrent, key.monthly_tokens),
                tenant_limits=Limits(
                    tenant.rpm, tenant.tpm, tenant.max_concurrent, tenant.monthly_tokens
                ),
                capture_default=(
                    key.capture_default
                    if key.capture_default is not None
                    else (True if tenant.capture_default else None)
                ),
                is_from_key_row=True,
            )
        return _Cached(principal, "", expires)


def bearer_token(request: Request) -> str | None:
    return token_from_headers(request.headers)


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key a request sends: `Authorization: Bearer KEY`, else the Azure `api-key` header."""
    header = headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key") or None


async def authenticate(auth: Authenticator, token: str | None) -> Principal:
    """The principal for `token`: from memory when known, else checked in a worker thread."""
    principal = auth.cached(token)
    if principal is None:
        principal = await run_in_threadpool(auth.resolve, token)
    return principal


async def get_principal(request: Request) -> Principal:
    """FastAPI dependency: who is calling. Also stored as `request.state.principal`.

    `ownllm.api.bodies` resolves it from the headers before the body is read and leaves it
    in the scope under `PRINCIPAL_SCOPE_KEY`; then it is not resolved again."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:
        auth = request.app.state.gateway.auth  # the app's Gateway (`gateway.get_gateway`)
        principal = await authenticate(auth, bearer_token(request))
    request.state.principal = principal
    return principal


def require_scope(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """Dependency factory: the principal, refused with 403 unless its key has `scope`."""
    if scope not in ALL_SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(sorted(ALL_SCOPES))}")

    async def _require(principal: Principal = Depends(get_principal)) -> Principal:
        if not principal.is_admin and scope not in principal.scopes:
            raise PermissionDeniedError(
                f"This API key lacks the '{scope}' scope. Create a key with "
                f"`ownllm keys create ... --scopes {scope}`."
            )
        return principal

    _require.scope = scope  # what tests/api/test_inference_routes.py finds routes by
    return _require


async def require_admin(principal: Principal = Depends(get_principal)) -> Principal:
    """Dependency: the admin key (or open development mode), else 403."""
    if not principal.is_admin:
        raise PermissionDeniedError("This route needs the admin key (OWNLLM_ADMIN_KEY).")
    return principal
