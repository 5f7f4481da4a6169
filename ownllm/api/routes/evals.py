"""/v1/evals: OpenAI's Evals API — evals, their runs against a model, an adapter or an
alias, and each run's output items. Every route needs the `inference` scope (a run is
inference traffic) and sees only the caller's tenant: another tenant's eval or run is a 404.

    POST   /v1/evals                                   {name, data_source_config, testing_criteria, metadata}
    GET    /v1/evals                                   ?after, limit, order
    GET    /v1/evals/{eval_id}                         (an id, or a name: the newest of it)
    POST   /v1/evals/{eval_id}                         {name, metadata}
    DELETE /v1/evals/{eval_id}                         with its runs
    POST   /v1/evals/{eval_id}/runs                    {name, data_source, metadata}: queued
    GET    /v1/evals/{eval_id}/runs                    ?after, limit, order, status
    GET    /v1/evals/{eval_id}/runs/{run_id}
    POST   /v1/evals/{eval_id}/runs/{run_id}           cancel
    DELETE /v1/evals/{eval_id}/runs/{run_id}
    GET    /v1/evals/{eval_id}/runs/{run_id}/output_items            ?status, after, limit
    GET    /v1/evals/{eval_id}/runs/{run_id}/output_items/{item_id}

The run's `data_source.model` is resolved once, when the run is created: an alias means
the version it points at then (`adapter_id` in the run), for every item.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ownllm.api.state import AppState, get_state
from ownllm.errors import ServerError
from ownllm.evals import store
from ownllm.evals.store import Page
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal

router = APIRouter(prefix="/v1", tags=["evals"])
scope = require_scope("inference")


class EvalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=256)
    data_source_config: dict[str, Any]
    testing_criteria: list[Any]
    metadata: dict[str, str] | None = None


class EvalUpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=256)
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None


def _db(state: AppState):
    if state.db is None:
        raise ServerError("This server has no database; evals need one.")
    return state.db


def start_run(
    state: AppState, principal: Principal, eval_ref: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Queue a run (HTTP, CLI paths, the red-team suite and the promote loop)."""
    data_source = body.get("data_source")
    model = data_source.get("model") if isinstance(data_source, dict) else None
    adapter_id = None
    if isinstance(model, str) and model:
        adapter_id = store.pinned_version(_db(state), principal, model, state.model_id)
    run = store.create_run(
        _db(state),
        principal,
        eval_ref,
        data_source=data_source,
        adapter_id=adapter_id,
        name=body.get("name"),
        metadata=body.get("metadata"),
    )
    if state.eval_worker is not None:
        state.eval_worker.wake()
    return run


@router.post("/evals")
async def create_eval(
    body: EvalBody, principal: Principal = Depends(scope), state: AppState = Depends(get_state)
) -> dict:
    return await run_in_threadpool(
        lambda: store.create_eval(
            _db(state),
            principal,
            name=body.name,
            data_source_config=body.data_source_config,
            testing_criteria=body.testing_criteria,
            metadata=body.metadata,
        )
    )


@router.get("/evals")
async def list_evals(
    after: str | None = None,
    limit: int | None = Query(None),
    order: str | None = None,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    page = Page.of(limit, after, order)
    return await run_in_threadpool(store.list_evals, _db(state), principal, page)


@router.get("/evals/{eval_id}")
async def get_eval(
    eval_id: str, principal: Principal = Depends(scope), state: AppState = Depends(get_state)
) -> dict:
    return await run_in_threadpool(store.get_eval, _db(state), principal, eval_id)


@router.post("/evals/{eval_id}")
async def update_eval(
    eval_id: str,
    body: EvalUpdateBody,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    return await run_in_threadpool(
        store.update_eval, _db(state), principal, eval_id, body.name, body.metadata
    )


@router.delete("/evals/{eval_id}")
async def delete_eval(
    eval_id: str, principal: Principal = Depends(scope), state: AppState = Depends(get_state)
) -> dict:
    deleted = await run_in_threadpool(store.delete_eval, _db(state), principal, eval_id)
    return {"object": "eval.deleted", "deleted": True, "eval_id": deleted}


@router.post("/evals/{eval_id}/runs")
async def create_run(
    eval_id: str,
    body: RunBody,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    return await run_in_threadpool(start_run, state, principal, eval_id, body.model_dump())


@router.get("/evals/{eval_id}/runs")
async def list_runs(
    eval_id: str,
    after: str | None = None,
    limit: int | None = Query(None),
    order: str | None = None,
    status: str | None = None,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    page = Page.of(limit, after, order)
    return await run_in_threadpool(store.list_runs, _db(state), principal, eval_id, page, status)


@router.get("/evals/{eval_id}/runs/{run_id}")
async def get_run(
    eval_id: str,
    run_id: str,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    return await run_in_threadpool(store.get_run, _db(state), principal, eval_id, run_id)


@router.post("/evals/{eval_id}/runs/{run_id}")
async def cancel_run(
    eval_id: str,
    run_id: str,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    return await run_in_threadpool(store.cancel_run, _db(state), principal, eval_id, run_id)


@router.delete("/evals/{eval_id}/runs/{run_id}")
async def delete_run(
    eval_id: str,
    run_id: str,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    deleted = await run_in_threadpool(store.delete_run, _db(state), principal, eval_id, run_id)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": deleted}


@router.get("/evals/{eval_id}/runs/{run_id}/output_items")
async def list_output_items(
    eval_id: str,
    run_id: str,
    after: str | None = None,
    limit: int | None = Query(None),
    order: str | None = None,
    status: str | None = None,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    page = Page.of(limit, after, order)
    return await run_in_threadpool(
        store.list_output_items, _db(state), principal, eval_id, run_id, page, status
    )


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{item_id}")
async def get_output_item(
    eval_id: str,
    run_id: str,
    item_id: str,
    principal: Principal = Depends(scope),
    state: AppState = Depends(get_state),
) -> dict:
    return await run_in_threadpool(
        store.get_output_item, _db(state), principal, eval_id, run_id, item_id
    )
