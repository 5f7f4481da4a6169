"""API keys → principals: hashing, open development mode, admin key, revocation, scopes."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text

from ownllm.api.app import create_app
from ownllm.errors import AuthenticationError
from ownllm.gateway.auth import (
    Authenticator,
    generate_key,
    hash_key,
    require_scope,
    startup_problem,
)
from ownllm.gateway.keys import create_key, revoke_key
from ownllm.gateway.principal import OPEN_DEV_PRINCIPAL, Principal
from ownllm.store.db import Database
from tests.tenants import gateway_state


@pytest.fixture
def db(tmp_path):
    database = Database.open(f"sqlite:///{tmp_path / 'auth.db'}")
    yield database
    database.close()


def test_key_is_random_and_only_its_hash_is_stored(db, tmp_path):
    created = create_key(db, "acme", "ci")
    assert created.secret.startswith("sk-") and len(created.secret) >= 40
    assert generate_key() != generate_key()
    with db.engine.connect() as c:
        dump = " ".join(str(row) for row in c.execute(text("SELECT * FROM api_keys")))
    assert created.secret not in dump
    assert hash_key(created.secret) in dump
    db.close()
    assert created.secret.encode() not in (tmp_path / "auth.db").read_bytes()


def test_open_mode_only_on_loopback_without_keys(db):
    now = [0.0]
    loopback = Authenticator(db, loopback=True, clock=lambda: now[0])
    assert loopback.resolve(None) is OPEN_DEV_PRINCIPAL
    assert loopback.cached("sk-anything") is OPEN_DEV_PRINCIPAL
    public = Authenticator(db, loopback=False)
    with pytest.raises(AuthenticationError):
        public.resolve("sk-anything")
    assert public.cached("sk-anything") is None
    created = create_key(db, "acme", "ci")  # as `ownllm keys create` in another process
    now[0] += 1.5  # open mode ends within a second
    with pytest.raises(AuthenticationError, match="didn't provide an API key"):
        loopback.resolve(None)
    assert loopback.cached(None) is None
    principal = loopback.resolve(created.secret)
    assert principal.tenant_id == "acme" and principal.key_id == created.info.id
    assert not principal.is_admin


def test_admin_key_closes_open_mode_and_is_admin(db):
    auth = Authenticator(db, admin_key="sk-admin-secret", loopback=True)
    with pytest.raises(AuthenticationError):
        auth.resolve("sk-wrong")
    assert auth.resolve("sk-admin-secret").is_admin


def test_revoked_elsewhere_stops_within_the_cache_time(db):
    now = [1000.0]
    auth = Authenticator(db, loopback=True, cache_seconds=5, clock=lambda: now[0])
    created = create_key(db, "acme", "ci")
    assert auth.resolve(created.secret).tenant_id == "acme"
    revoke_key(db, created.info.id)  # as `ownllm keys revoke` in another process would
    assert auth.resolve(created.secret).tenant_id == "acme"  # cached
    now[0] += 6
    with pytest.raises(AuthenticationError, match="revoked"):
        auth.resolve(created.secret)
    auth.forget()
    assert auth.cached(created.secret) is None


def test_startup_refuses_public_address_without_keys(db):
    message = startup_problem(db, "0.0.0.0", "")
    assert "refusing to listen on 0.0.0.0" in message
    assert "ownllm keys create --tenant" in message
    assert startup_problem(db, "127.0.0.1", "") is None
    assert startup_problem(db, "0.0.0.0", "sk-admin") is None
    create_key(db, "acme", "ci")
    assert startup_problem(db, "0.0.0.0", "") is None


def _app(tmp_path, tenants_db) -> FastAPI:
    from tests.tenants import make_two_tenants

    tenants = make_two_tenants(tenants_db)
    app = create_app(gateway_state(tmp_path, tenants), start_engine=False)

    @app.get("/probe")
    async def probe(principal: Principal = Depends(require_scope("files"))) -> dict:
        return {"tenant": principal.tenant_id}

    return app, tenants


async def test_http_missing_wrong_and_scoped_keys(tmp_path, db):
    app, tenants = _app(tmp_path, db)
    narrow = tenants.add_key("acme", "narrow", scopes="inference")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        missing = await client.get("/probe")
        wrong = await client.get("/probe", headers={"Authorization": "Bearer sk-nope"})
        ok = await client.get("/probe", headers=tenants.a.headers)
        azure = await client.get("/probe", headers={"api-key": tenants.b.key})
        scoped = await client.get("/probe", headers=narrow.headers)
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert ok.json() == {"tenant": "acme"} and azure.json() == {"tenant": "globex"}
    assert scoped.status_code == 403
    assert "'files' scope" in scoped.json()["error"]["message"]


def test_verified_key_is_answered_from_memory_on_a_public_address(db):
    created = create_key(db, "acme", "ci")
    auth = Authenticator(db, loopback=False)
    assert auth.cached(created.secret) is None
    auth.resolve(created.secret)
    assert auth.cached(created.secret).key_id == created.info.id
    assert auth.cached("sk-other") is None
