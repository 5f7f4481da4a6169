"""Tenants and keys: validation, tenant-scoped views, revocation."""

from __future__ import annotations

import pytest

from ownllm.errors import ConflictError, InvalidRequestError, NotFoundError
from ownllm.gateway import keys
from ownllm.gateway.principal import Limits


def test_create_key_creates_tenant_and_lists_without_secret(two_tenants):
    db = two_tenants.db
    created = keys.create_key(db, "initech", "ci", scopes="inference,files", limits=Limits(rpm=5))
    assert created.info.scopes == ("files", "inference")
    assert keys.get_tenant(db, "initech").limits == Limits()
    listed = keys.list_keys(db, "initech")
    assert [k.id for k in listed] == [created.info.id]
    body = listed[0].to_dict()
    assert body["rpm"] == 5 and created.secret not in str(body)
    assert body["redacted_value"] == created.secret[:11] + "…"
    assert [t.id for t in keys.list_tenants(db)] == ["acme", "globex", "initech"]


def test_other_tenants_key_is_not_found(two_tenants):
    db, a, b = two_tenants.db, two_tenants.a, two_tenants.b
    with pytest.raises(NotFoundError):
        keys.get_key(db, b.key_id, tenant_id="acme")
    with pytest.raises(NotFoundError):
        keys.revoke_key(db, b.key_id, tenant_id="acme")
    assert keys.get_key(db, b.key_id).revoked_at is None
    assert [k.id for k in keys.list_keys(db, "acme")] == [a.key_id]


def test_revoke_is_idempotent(two_tenants):
    first = keys.revoke_key(two_tenants.db, two_tenants.a.key_id)
    again = keys.revoke_key(two_tenants.db, two_tenants.a.key_id)
    assert first.revoked_at is not None and again.revoked_at == first.revoked_at
    assert keys.list_keys(two_tenants.db, "acme", include_revoked=False) == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tenant_id": "a:b"}, "tenant"),
        ({"tenant_id": ""}, "tenant"),
        ({"scopes": "inference,admin"}, "scopes"),
        ({"name": " "}, "name"),
        ({"limits": Limits(rpm=0)}, "rpm"),
    ],
)
def test_invalid_input_names_the_param(two_tenants, kwargs, param):
    args = {"tenant_id": "acme", "name": "ci", **kwargs}
    with pytest.raises(InvalidRequestError) as e:
        keys.create_key(two_tenants.db, args.pop("tenant_id"), args.pop("name"), **args)
    assert e.value.param == param


def test_duplicate_tenant_is_a_conflict(two_tenants):
    with pytest.raises(ConflictError):
        keys.create_tenant(two_tenants.db, "acme")
