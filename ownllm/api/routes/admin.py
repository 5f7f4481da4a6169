"""Tenant and key management over HTTP: `/v1/admin/*` for the admin key, `/v1/keys` for a
tenant's own keys.

The admin (`OWNLLM_ADMIN_KEY`, or open development mode) creates tenants and keys, changes
limits and revokes keys of any tenant. A tenant key lists its own tenant's keys and can
revoke itself (a leaked key); another tenant's key id is a 404, as if it did not exist. A new key's secret is in the
create response only. A new key gets `gateway.keys.DEFAULT_KEY_LIMITS` (rpm 60, tpm 100000,
max_concurrent 4) for each limit the body leaves out; a limit sent as null is none.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ownllm.api.state import AppState, get_state
from ownllm.errors import PermissionDeniedError, ServerError
from ownllm.gateway import keys
from ownllm.gateway.auth import get_principal, require_admin
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Limits, Principal

router = APIRouter(tags=["admin"])


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    monthly_tokens: int | None = Field(None, ge=1)

    def merged(self, old: Limits) -> Limits:
        """The old limits with the fields this body names replaced (null clears)."""
        limit_names = LimitsBody.model_fields
        given = {n: getattr(self, n) for n in self.model_fields_set if n in limit_names}
        return Limits(**{**old.__dict__, **given})


class TenantBody(LimitsBody):
    id: str = Field(min_length=1, max_length=64)


class KeyBody(LimitsBody):
    tenant: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] | None = None


def _db(state: AppState):
    if state.db is None:
        raise ServerError("This server has no database; keys need one.")
    return state.db


@router.post("/v1/admin/tenants", dependencies=[Depends(require_admin)])
async def create_tenant(body: TenantBody, state: AppState = Depends(get_state)) -> dict:
    limits = body.merged(Limits())
    info = await run_in_threadpool(keys.create_tenant, _db(state), body.id, limits)
    return info.to_dict()


@router.get("/v1/admin/tenants", dependencies=[Depends(require_admin)])
async def list_tenants(state: AppState = Depends(get_state)) -> dict:
    items = await run_in_threadpool(keys.list_tenants, _db(state))
    return {"object": "list", "data": [t.to_dict() for t in items]}


@router.get("/v1/admin/tenants/{tenant_id}", dependencies=[Depends(require_admin)])
async def get_tenant(tenant_id: str, state: AppState = Depends(get_state)) -> dict:
    return (await run_in_threadpool(keys.get_tenant, _db(state), tenant_id)).to_dict()


@router.patch("/v1/admin/tenants/{tenant_id}", dependencies=[Depends(require_admin)])
async def update_tenant(
    tenant_id: str,
    body: LimitsBody,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    def update() -> keys.TenantInfo:
        old = keys.get_tenant(_db(state), tenant_id)
        return keys.set_tenant_limits(_db(state), tenant_id, body.merged(old.limits))

    info = await run_in_threadpool(update)
    gateway.auth.forget()
    return info.to_dict()


@router.post("/v1/admin/keys", dependencies=[Depends(require_admin)])
async def create_key(
    body: KeyBody, state: AppState = Depends(get_state), gateway: Gateway = Depends(get_gateway)
) -> dict:
    """Create a key; limits left out are rpm 60, tpm 100000, max_concurrent 4 (null: none)."""
    created = await run_in_threadpool(
        lambda: keys.create_key(
            _db(state),
            body.tenant,
            body.name,
            scopes=body.scopes,
            limits=body.merged(keys.DEFAULT_KEY_LIMITS),
        )
    )
    gateway.auth.forget()  # the first key ends open development mode at once
    return {**created.info.to_dict(), "key": created.secret}


@router.get("/v1/admin/keys", dependencies=[Depends(require_admin)])
async def list_all_keys(
    tenant: str | None = Query(None), state: AppState = Depends(get_state)
) -> dict:
    items = await run_in_threadpool(keys.list_keys, _db(state), tenant)
    return {"object": "list", "data": [k.to_dict() for k in items]}


@router.get("/v1/admin/keys/{key_id}", dependencies=[Depends(require_admin)])
async def get_any_key(key_id: str, state: AppState = Depends(get_state)) -> dict:
    return (await run_in_threadpool(keys.get_key, _db(state), key_id)).to_dict()


@router.patch("/v1/admin/keys/{key_id}", dependencies=[Depends(require_admin)])
async def update_key(
    key_id: str,
    body: LimitsBody,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    def update() -> keys.KeyInfo:
        old = keys.get_key(_db(state), key_id)
        return keys.set_key_limits(_db(state), key_id, body.merged(old.limits))

    info = await run_in_threadpool(update)
    gateway.auth.forget()
    return info.to_dict()


@router.delete("/v1/admin/keys/{key_id}", dependencies=[Depends(require_admin)])
async def revoke_any_key(
    key_id: str, state: AppState = Depends(get_state), gateway: Gateway = Depends(get_gateway)
) -> dict:
    info = await run_in_threadpool(keys.revoke_key, _db(state), key_id)
    gateway.auth.forget()
    return {**info.to_dict(), "deleted": True}


def _own_tenant(principal: Principal) -> str | None:
    return None if principal.is_admin else principal.tenant_id


@router.get("/v1/keys")
async def list_own_keys(
    principal: Principal = Depends(get_principal), state: AppState = Depends(get_state)
) -> dict:
    items = await run_in_threadpool(keys.list_keys, _db(state), principal.tenant_id)
    return {"object": "list", "data": [k.to_dict() for k in items]}


@router.get("/v1/keys/{key_id}")
async def get_own_key(
    key_id: str,
    principal: Principal = Depends(get_principal),
    state: AppState = Depends(get_state),
) -> dict:
    info = await run_in_threadpool(keys.get_key, _db(state), key_id, _own_tenant(principal))
    return info.to_dict()


@router.delete("/v1/keys/{key_id}")
async def revoke_own_key(
    key_id: str,
    principal: Principal = Depends(get_principal),
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    tenant_id = _own_tenant(principal)
    if tenant_id is not None and key_id != principal.key_id:
        # another tenant's key stays a 404; a sibling key is the admin's to revoke
        await run_in_threadpool(keys.get_key, _db(state), key_id, tenant_id)
        raise PermissionDeniedError(
            "A key can revoke only itself; the admin revokes other keys of the tenant.",
            param="key_id",
        )
    info = await run_in_threadpool(keys.revoke_key, _db(state), key_id, tenant_id)
    gateway.auth.forget()
    return {**info.to_dict(), "deleted": True}
