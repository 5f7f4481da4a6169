"""Who is calling: the resolved API key, its tenant, scopes and limits.

`ownllm.gateway.auth.get_principal` is the FastAPI dependency every route
takes. In open development mode (loopback, no key exists) every request is
the admin (tenant `@admin`) with all scopes; otherwise the key is checked there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

ALL_SCOPES = frozenset({"inference", "files", "fine-tuning", "adapters", "usage"})
# The tenant id of the admin key, open development mode and the CLI operator. '@' is not
# allowed in a tenant name (`gateway.keys.TENANT_RE`), so no tenant can act as the admin:
# read its stored completions and files, resolve its adapter names or share its
# prefix-cache scope. (Before, the admin was tenant `default`, a legal name.)
ADMIN_TENANT = "@admin"


@dataclass(frozen=True)
class Limits:
    """Per-key or per-tenant limits; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    monthly_tokens: int | None = None

    @property
    def is_unlimited(self) -> bool:
        return (
            self.rpm is None
            and self.tpm is None
            and self.max_concurrent is None
            and self.monthly_tokens is None
        )


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str | None = None
    scopes: frozenset[str] = ALL_SCOPES
    is_admin: bool = False
    key_limits: Limits = field(default=NO_LIMITS)
    tenant_limits: Limits = field(default=NO_LIMITS)
    # Set by auth from the key and tenant rows it already loaded, so capture needs no
    # query per request: the key's store default, else True when the tenant's is on.
    capture_default: bool | None = None
    is_from_key_row: bool = False

    def can_see(self, owner_tenant_id: str, is_public: bool = False) -> bool:
        """A tenant sees its own objects and public ones; the admin sees all."""
        return self.is_admin or is_public or owner_tenant_id == self.tenant_id


# Open mode is the admin, not an identity of its own: it is the operator at this machine
# before any key exists, so what it stores (files, jobs, adapters) stays the admin's own
# once `OWNLLM_ADMIN_KEY` is set.
OPEN_DEV_PRINCIPAL = Principal(tenant_id=ADMIN_TENANT, is_admin=True)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (open development mode needs one)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
