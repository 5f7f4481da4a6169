"""Who is calling: the resolved API key, its tenant and scopes.

`get_principal` is the FastAPI dependency every route takes. In open
development mode (loopback, no key exists) every request is the `default`
tenant with all scopes; otherwise the key is checked by `ownllm.gateway.auth`.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_SCOPES = frozenset({"inference", "files", "fine-tuning", "adapters", "usage"})
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str | None = None
    scopes: frozenset[str] = ALL_SCOPES
    is_admin: bool = False

    def can_see(self, owner_tenant_id: str, is_public: bool = False) -> bool:
        """A tenant sees its own objects and public ones; the admin sees all."""
        return self.is_admin or is_public or owner_tenant_id == self.tenant_id


OPEN_DEV_PRINCIPAL = Principal(tenant_id=DEFAULT_TENANT, is_admin=True)
