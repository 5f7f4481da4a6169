"""/v1/aliases: a tenant's model aliases, promoted through their gate and rolled back.

An ownllm extension beside /v1/adapters (same `adapters` scope). `{alias}` is one of the
caller's alias names; another tenant's alias is a 404. A client calls the alias as its
`model` and `/v1/models` lists it with what it points at.

    GET    /v1/aliases                     list
    POST   /v1/aliases                     {"name", "target": adapter | "base", "gate"}
    GET    /v1/aliases/{alias}             show
    POST   /v1/aliases/{alias}             {"gate"}: change the gate
    DELETE /v1/aliases/{alias}             the alias and its history (versions stay)
    POST   /v1/aliases/{alias}/promote     {"to": adapter | "base"}: 409 gate_refused with
                                           the figures when the gate refuses
    POST   /v1/aliases/{alias}/rollback    back to the version before
    GET    /v1/aliases/{alias}/moves       every move and refusal: who, when, the figures

A gate: {"evals": [{"eval": "support-holdout", "min_pass_rate": 0.8, "criterion": null}],
"max_redteam_success_rate": 0.05}.

A router alias (`{"name", "router": {"versions": [adapter, …], "threshold": 0.3}}`, no
target) sends each request to the version whose training data is nearest its prompt by
the shipped MiniLM (`ownllm.adapters.routing`), or to the base model below the threshold
(calibrated on the training data when omitted); each version's index is built here, from
the dataset files its lineage names. The
answer names the pick in `ownllm_route`; the ledger row names the adapter that ran.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ownllm.adapters import aliases, registry
from ownllm.adapters.aliases import AliasRecord, Gate
from ownllm.adapters.routing import (
    ROUTE_CHARS,
    RoutedVersion,
    Router,
    calibrate,
    calibrate_fast,
    check_router,
    spread,
)
from ownllm.api.state import AppState, get_state
from ownllm.errors import InvalidRequestError, ServerError
from ownllm.evals.gate import check_gate
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal

router = APIRouter(prefix="/v1", tags=["aliases"])


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    target: str = "base"
    gate: dict[str, Any] | None = None
    router: dict[str, Any] | None = None  # {"versions": [adapter, …], "threshold"?: 0.3}


def version_prompts(state: AppState, record, param: str) -> list[str]:
    """The user messages of the dataset files `record`'s lineage names (its training data)."""
    from ownllm.store.schema import File
    from ownllm.tuning.data import DataError, read_examples
    from ownllm.tuning.files import file_path

    texts: list[str] = []
    for dataset in record.datasets:
        with _db(state).session() as s:
            row = s.get(File, dataset.get("file_id"))
        if row is None:
            continue
        try:
            examples = read_examples(file_path(state.data_dir, row), param=param)
        except (DataError, OSError):
            continue
        for example in examples:
            texts += [m["content"] for m in example.messages
                      if m.get("role") == "user" and isinstance(m.get("content"), str)]  # fmt: skip
    if not texts:
        raise InvalidRequestError(
            f"adapter {record.name!r} names no training data this server still has (its "
            "lineage's dataset files), so requests cannot be routed to it",
            param=param,
        )
    return [t[:ROUTE_CHARS] for t in texts]


def build_router(state: AppState, principal: Principal, raw: Any) -> Router:
    """The router a client sent, with each version's index from its training data (and
    its threshold calibrated on that data when the client gave none)."""
    refs, threshold = check_router(raw)
    model = state.embedding_model.load_now()
    static = state.embedding_model.static(distill=True)  # the first router distils it
    versions = []
    for i, ref in enumerate(refs):
        param = f"router.versions[{i}]"
        record = aliases.resolve_target(_db(state), principal, ref, state.model_id, param=param)
        if record is None:
            raise InvalidRequestError(
                "a router's versions are adapters; the base model answers below the threshold",
                param=param,
            )
        texts = version_prompts(state, record, param)
        examples = spread(texts)
        index = model.embed(examples)
        static_index = _static_index(static, examples)
        versions.append(RoutedVersion(record.id, record.name, tuple(map(tuple, index)),
                                      len(texts), tuple(map(tuple, static_index))))  # fmt: skip
    is_calibrated = threshold is None
    if threshold is None:
        threshold = calibrate([v.index for v in versions])
    if not all(v.static_index for v in versions):
        return Router(tuple(versions), threshold, is_calibrated)
    static_threshold, margin = calibrate_fast(
        [v.static_index for v in versions], [v.index for v in versions]
    )
    return Router(tuple(versions), threshold, is_calibrated, static_threshold, margin)


def _static_index(static, examples: list[str]) -> list[list[float]]:
    """The examples' static vectors; none (no static stage) without static vectors or
    when an example has no tokens."""
    vectors = static.embed(examples) if static is not None else []
    return vectors if vectors and all(v is not None for v in vectors) else []


class GateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: dict[str, Any] | None = None


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(min_length=1, max_length=512)


def actor_of(principal: Principal) -> str:
    """Who moved an alias, as its moves record it: the key id, or the admin."""
    return principal.key_id or ("admin" if principal.is_admin else principal.tenant_id)


def _db(state: AppState):
    if state.db is None:
        raise ServerError("This server has no database; model aliases need one.")
    return state.db


def target_name(state: AppState, principal: Principal, alias: AliasRecord) -> str:
    """What the alias's version is called: its adapter's name, or the base model id."""
    if alias.target is None:
        return state.model_id
    record = registry.resolve_model(_db(state), principal, alias.target)
    return record.name if record is not None else alias.target


def alias_object(state: AppState, principal: Principal, alias: AliasRecord) -> dict:
    return alias.to_dict(target_name(state, principal, alias))


def alias_models(state: AppState, principal: Principal) -> list[dict]:
    """The caller's aliases as `/v1/models` entries, with `alias` saying what each is."""
    if state.db is None:
        return []
    out = []
    for alias in aliases.list_aliases(state.db, principal):
        out.append(
            {
                "id": alias.name,
                "object": "model",
                "created": alias.created_at,
                "owned_by": alias.tenant_id,
                "root": state.model_id,
                "parent": state.model_id,
                "adapter_id": alias.target,
                "alias": {
                    "target": target_name(state, principal, alias),
                    "version": alias.version,
                    "updated_at": alias.updated_at,
                },
            }  # fmt: skip
        )
    return out


@router.get("/aliases")
async def list_aliases_route(
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    def work():
        records = aliases.list_aliases(_db(state), principal)
        return [alias_object(state, principal, r) for r in records]

    return {"object": "list", "data": await run_in_threadpool(work)}


@router.post("/aliases")
async def create_alias_route(
    body: AliasBody,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    def work():
        db = _db(state)
        gate = Gate.from_dict(body.gate)
        router = None
        if body.router is not None:
            if "target" in body.model_fields_set:
                raise InvalidRequestError(
                    "a router alias has no target: it routes over router.versions",
                    param="target",
                )
            router = build_router(state, principal, body.router)
        target = aliases.resolve_target(db, principal, body.target, state.model_id)
        actor = actor_of(principal)
        record = aliases.create_alias(db, principal, body.name, target, gate, actor, router)
        return alias_object(state, principal, record)

    return await run_in_threadpool(work)


@router.post("/aliases/{name:path}/promote")
async def promote_route(
    name: str,
    body: PromoteBody,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    def work():
        db = _db(state)
        aliases.get_alias(db, principal, name)  # 404 before anything about the target
        target = aliases.resolve_target(db, principal, body.to, state.model_id, param="to")
        check = check_gate(db, principal.tenant_id)
        record = aliases.promote(db, principal, name, target, actor_of(principal), check)
        return alias_object(state, principal, record)

    return await run_in_threadpool(work)


@router.post("/aliases/{name:path}/rollback")
async def rollback_route(
    name: str,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    def work():
        record = aliases.rollback(_db(state), principal, name, actor_of(principal))
        return alias_object(state, principal, record)

    return await run_in_threadpool(work)


@router.get("/aliases/{name:path}/moves")
async def moves_route(
    name: str,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    moves = await run_in_threadpool(aliases.list_moves, _db(state), principal, name)
    return {"object": "list", "data": moves}


@router.get("/aliases/{name:path}")
async def show_alias_route(
    name: str,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    def work():
        return alias_object(state, principal, aliases.get_alias(_db(state), principal, name))

    return await run_in_threadpool(work)


@router.post("/aliases/{name:path}")
async def set_gate_route(
    name: str,
    body: GateBody,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    def work():
        gate = Gate.from_dict(body.gate)
        record = aliases.set_gate(_db(state), principal, name, gate)
        return alias_object(state, principal, record)

    return await run_in_threadpool(work)


@router.delete("/aliases/{name:path}")
async def delete_alias_route(
    name: str,
    principal: Principal = Depends(require_scope("adapters")),
    state: AppState = Depends(get_state),
) -> dict:
    record = await run_in_threadpool(aliases.delete_alias, _db(state), principal, name)
    return {"id": record.name, "object": "model.alias.deleted", "deleted": True}
