"""Two tenants with keys, for isolation tests of every object type.

`two_tenants` (fixture in tests/conftest.py, parametrised over SQLite and PostgreSQL
through `db_url`) opens a migrated database and creates tenants `acme` and `globex`,
one key each (all scopes), and an admin key. Build an app on it with
`gateway_state(tmp_path, two_tenants)` and send `two_tenants.a.headers` /
`two_tenants.b.headers` / `two_tenants.admin_headers`; open development mode is off
because keys exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ownllm.gateway.keys import create_key
from ownllm.gateway.principal import NO_LIMITS, Limits

ADMIN_KEY = "sk-admin-test-0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class TenantKey:
    tenant: str
    key_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class TwoTenants:
    db: Any  # ownllm.store.db.Database
    db_url: str
    a: TenantKey  # tenant "acme"
    b: TenantKey  # tenant "globex"
    admin_key: str = ADMIN_KEY

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def add_key(
        self, tenant: str, name: str = "extra", limits: Limits = NO_LIMITS, scopes: Any = None
    ) -> TenantKey:
        created = create_key(self.db, tenant, name, scopes=scopes, limits=limits)
        return TenantKey(tenant, created.info.id, created.secret)


def make_two_tenants(db: Any, db_url: str = "") -> TwoTenants:
    keys = []
    for tenant in ("acme", "globex"):
        created = create_key(db, tenant, "test")
        keys.append(TenantKey(tenant, created.info.id, created.secret))
    return TwoTenants(db=db, db_url=db_url, a=keys[0], b=keys[1])


def gateway_state(tmp_path: Path, tenants: TwoTenants, backend: Any = None, **auth: Any):
    """An AppState on the tenants' database with their admin key (no model loaded)."""
    from ownllm.api.state import AppState
    from ownllm.config import load_config
    from ownllm.store.blobs import DataDir

    config = load_config(env={}, overrides={"store": {"data_dir": str(tmp_path)}})
    config = replace(config, auth=replace(config.auth, admin_key=tenants.admin_key, **auth))
    state = AppState(config=config, data_dir=DataDir(tmp_path).ensure(), db=tenants.db)
    state.backend = backend
    return state
