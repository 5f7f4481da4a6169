"""Tenant and key management over HTTP, and cross-tenant isolation of keys and usage rows."""

from __future__ import annotations

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.gateway.usage import UsageRow
from tests.tenants import gateway_state


@pytest.fixture
async def client(tmp_path, two_tenants):
    state = gateway_state(tmp_path, two_tenants)
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        c.state, c.gateway = state, app.state.gateway
        yield c
    app.state.gateway.ledger.close()


async def test_admin_creates_tenant_and_key_that_then_works(client, two_tenants):
    admin = two_tenants.admin_headers
    tenant = await client.post(
        "/v1/admin/tenants", json={"id": "initech", "rpm": 30}, headers=admin
    )
    assert tenant.status_code == 200 and tenant.json()["rpm"] == 30
    created = await client.post(
        "/v1/admin/keys",
        json={"tenant": "initech", "name": "ci", "scopes": ["usage"], "monthly_tokens": 1000},
        headers=admin,
    )
    body = created.json()
    assert body["key"].startswith("sk-") and body["monthly_tokens"] == 1000
    headers = {"Authorization": f"Bearer {body['key']}"}
    mine = await client.get("/v1/keys", headers=headers)
    assert [k["id"] for k in mine.json()["data"]] == [body["id"]]
    assert "key" not in mine.json()["data"][0]
    listed = await client.get("/v1/admin/keys", params={"tenant": "initech"}, headers=admin)
    assert [k["id"] for k in listed.json()["data"]] == [body["id"]]
    revoked = await client.delete(f"/v1/admin/keys/{body['id']}", headers=admin)
    assert revoked.json()["revoked_at"] is not None
    after = await client.get("/v1/keys", headers=headers)
    assert after.status_code == 401 and "revoked" in after.json()["error"]["message"]


async def test_tenant_names_that_are_the_admins_are_refused(client, two_tenants):
    admin = two_tenants.admin_headers
    tenant = await client.post("/v1/admin/tenants", json={"id": "default"}, headers=admin)
    assert tenant.status_code == 400 and tenant.json()["error"]["param"] == "tenant"
    assert "reserved" in tenant.json()["error"]["message"]
    key = await client.post("/v1/admin/keys", json={"tenant": "@admin", "name": "x"}, headers=admin)
    assert key.status_code == 400 and key.json()["error"]["param"] == "tenant"
    listed = await client.get("/v1/admin/tenants", headers=admin)
    assert [t["id"] for t in listed.json()["data"]] == ["acme", "globex"]


async def test_a_new_key_gets_the_default_limits_unless_the_body_says_otherwise(
    client, two_tenants
):
    admin = two_tenants.admin_headers

    async def create(**body) -> dict:
        created = await client.post(
            "/v1/admin/keys", json={"tenant": "initech", "name": "ci", **body}, headers=admin
        )
        assert created.status_code == 200, created.text
        item = created.json()
        return {n: item[n] for n in ("rpm", "tpm", "max_concurrent", "monthly_tokens")}

    assert await create() == {"rpm": 60, "tpm": 100000, "max_concurrent": 4, "monthly_tokens": None}
    assert await create(rpm=5, max_concurrent=None) == {
        "rpm": 5,
        "tpm": 100000,
        "max_concurrent": None,
        "monthly_tokens": None,
    }
    unlimited = await create(rpm=None, tpm=None, max_concurrent=None)
    assert set(unlimited.values()) == {None}


async def test_admin_routes_refuse_tenant_keys(client, two_tenants):
    for method, path in [
        ("GET", "/v1/admin/tenants"),
        ("POST", "/v1/admin/keys"),
        ("GET", f"/v1/admin/keys/{two_tenants.b.key_id}"),
        ("DELETE", f"/v1/admin/keys/{two_tenants.b.key_id}"),
    ]:
        response = await client.request(method, path, headers=two_tenants.a.headers, json={})
        assert response.status_code == 403, path
        assert response.json()["error"]["type"] == "permission_error"


async def test_patch_changes_only_named_limits(client, two_tenants):
    admin, key_id = two_tenants.admin_headers, two_tenants.a.key_id
    await client.patch(f"/v1/admin/keys/{key_id}", json={"rpm": 5, "tpm": 500}, headers=admin)
    patched = await client.patch(f"/v1/admin/keys/{key_id}", json={"tpm": None}, headers=admin)
    assert (patched.json()["rpm"], patched.json()["tpm"]) == (5, None)
    bad = await client.patch(f"/v1/admin/keys/{key_id}", json={"rpm": 0}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    typo = await client.patch(f"/v1/admin/keys/{key_id}", json={"rmp": 5}, headers=admin)
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "rmp"


async def test_another_tenants_key_is_invisible(client, two_tenants):
    a, b = two_tenants.a, two_tenants.b
    read = await client.get(f"/v1/keys/{b.key_id}", headers=a.headers)
    missing = await client.get("/v1/keys/key-doesnotexist", headers=a.headers)
    assert read.status_code == 404 and missing.status_code == 404
    assert read.json()["error"]["message"].replace(b.key_id, "X") == missing.json()["error"][
        "message"
    ].replace("key-doesnotexist", "X")
    delete = await client.delete(f"/v1/keys/{b.key_id}", headers=a.headers)
    assert delete.status_code == 404
    listing = await client.get("/v1/keys", headers=a.headers)
    assert [k["id"] for k in listing.json()["data"]] == [a.key_id]
    still = await client.get("/v1/keys", headers=b.headers)
    assert still.status_code == 200  # b's key was not revoked by a


async def test_a_tenant_key_revokes_itself_not_its_siblings(client, two_tenants):
    a = two_tenants.a
    sibling = two_tenants.add_key("acme", "sibling")
    refused = await client.delete(f"/v1/keys/{sibling.key_id}", headers=a.headers)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "key_id"
    itself = await client.delete(f"/v1/keys/{a.key_id}", headers=a.headers)
    assert itself.status_code == 200 and itself.json()["revoked_at"] is not None
    assert (await client.get("/v1/keys", headers=a.headers)).status_code == 401
    assert (await client.get("/v1/keys", headers=sibling.headers)).status_code == 200


async def test_usage_rows_are_tenant_scoped(client, two_tenants):
    a, b = two_tenants.a, two_tenants.b
    ledger = client.gateway.ledger
    for who, tokens in ((a, 10), (a, 20), (b, 1000)):
        ledger.record(
            UsageRow(
                request_id="r",
                tenant_id=who.tenant,
                key_id=who.key_id,
                endpoint="chat.completions",
                model="tiny",
                status="ok",
                prompt_tokens=tokens,
                completion_tokens=1,
            )
        )
    mine = (await client.get("/v1/usage", params={"by": "key"}, headers=a.headers)).json()
    assert [(r["key"], r["prompt_tokens"]) for r in mine["data"]] == [(a.key_id, 30)]
    spoof = await client.get("/v1/usage", params={"tenant": "globex"}, headers=a.headers)
    assert spoof.json()["tenant"] == "acme"
    assert sum(r["prompt_tokens"] for r in spoof.json()["data"]) == 30
    admin = await client.get(
        "/v1/usage", params={"by": "tenant"}, headers=two_tenants.admin_headers
    )
    assert {r["tenant"]: r["prompt_tokens"] for r in admin.json()["data"]} == {
        "acme": 30,
        "globex": 1000,
    }
    bad = await client.get("/v1/usage", params={"by": "hour"}, headers=a.headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "by"
