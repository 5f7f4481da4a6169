"""The admin's identity: the admin key, open mode and the CLI act as tenant `@admin`, which
no tenant can take, so a tenant never reads what the admin stored or shares its
prefix-cache scope — not even a tenant `default` (the admin's id before) from an older
database."""

from __future__ import annotations

import httpx
import pytest

from ownllm.errors import InvalidRequestError
from ownllm.gateway import keys
from ownllm.gateway.auth import ADMIN_PRINCIPAL
from ownllm.gateway.principal import ADMIN_TENANT, OPEN_DEV_PRINCIPAL
from ownllm.store.schema import Tenant
from tests.api.test_stored_completions import chat, make_client


def test_admin_and_open_mode_share_an_id_no_tenant_can_take(two_tenants):
    assert ADMIN_PRINCIPAL.tenant_id == OPEN_DEV_PRINCIPAL.tenant_id == ADMIN_TENANT
    for name in (ADMIN_TENANT, "default", "Default"):
        with pytest.raises(InvalidRequestError) as e:
            keys.create_tenant(two_tenants.db, name)
        assert e.value.param == "tenant"
        with pytest.raises(InvalidRequestError):
            keys.create_key(two_tenants.db, name, "ci")
    with pytest.raises(InvalidRequestError, match="reserved"):
        keys.create_tenant(two_tenants.db, "default")
    assert [t.id for t in keys.list_tenants(two_tenants.db)] == ["acme", "globex"]


def _old_default_tenant(tenants):
    """A tenant `default` made before the name was reserved (an older database)."""
    with tenants.db.session() as session:
        session.add(Tenant(id="default", created_at=0, capture_default=False))
    return tenants.add_key("default", "old")


def test_an_existing_default_tenant_keeps_working(two_tenants):
    old = _old_default_tenant(two_tenants)
    again = keys.create_key(two_tenants.db, "default", "another")
    assert again.info.tenant_id == old.tenant == "default"


async def test_a_default_tenant_cannot_read_the_admins_data(tmp_path, two_tenants, tiny_model_dir):
    tenant = _old_default_tenant(two_tenants)
    admin = two_tenants.admin_headers
    client, state = make_client(tmp_path, two_tenants, tiny_model_dir)
    async with client:
        r = await client.post("/v1/chat/completions", headers=admin, json=chat("hi", store=True))
        assert r.status_code == 200, r.text
        cid = r.json()["id"]
        r = await client.post("/v1/files", headers=admin, data={"purpose": "user_data"},
                              files={"file": ("notes.txt", b"the admin's notes")})  # fmt: skip
        assert r.status_code == 200, r.text
        fid = r.json()["id"]
        mine = await client.post("/v1/chat/completions", headers=tenant.headers, json=chat("hi"))
        assert mine.status_code == 200

        async def tenant_get(path: str) -> httpx.Response:
            return await client.get(path, headers=tenant.headers)

        assert (await tenant_get(f"/v1/chat/completions/{cid}")).status_code == 404
        assert (await tenant_get("/v1/chat/completions")).json()["data"] == []
        assert (await tenant_get(f"/v1/files/{fid}")).status_code == 404
        assert (await tenant_get(f"/v1/files/{fid}/content")).status_code == 404
        assert fid not in [f["id"] for f in (await tenant_get("/v1/files")).json()["data"]]
        assert (await client.get(f"/v1/files/{fid}", headers=admin)).status_code == 200
    admins, tenants = (request.cache_scope for request in state.backend.requests)
    assert admins == ADMIN_TENANT and tenants == "default"  # prefix caches do not mix
