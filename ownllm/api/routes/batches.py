"""The OpenAI Batch API: bulk requests answered on idle capacity.

    POST /v1/batches                    {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches                    ?after= &limit= (1..100, default 20), newest first
    GET  /v1/batches/{batch_id}
    POST /v1/batches/{batch_id}/cancel

The input file is one uploaded with purpose `batch` by the same tenant (another tenant's
file does not exist: 404). A new batch is `validating`; the server's batch worker
(`ownllm.api.batch_worker`) checks every line, answers them at batch priority and writes
the output and error files (`GET /v1/files/{id}/content`). The lines' states live in the
database (`ownllm.batches.store`).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ownllm.api.batch_worker import ENDPOINT_RUNS
from ownllm.api.pages import cursor_page
from ownllm.api.schemas import ERROR_RESPONSES
from ownllm.api.state import AppState, get_state
from ownllm.batches import store
from ownllm.errors import InvalidRequestError
from ownllm.gateway.auth import require_scope
from ownllm.gateway.principal import Principal
from ownllm.tuning import files

router = APIRouter(prefix="/v1", tags=["batches"])

MAX_METADATA_KEYS = 16


class BatchRequest(BaseModel):
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None


def _check(body: BatchRequest) -> None:
    if body.endpoint not in ENDPOINT_RUNS:
        raise InvalidRequestError(
            f"Invalid 'endpoint': {body.endpoint!r}. A batch can call {', '.join(ENDPOINT_RUNS)}.",
            param="endpoint",
            code="invalid_value",
        )
    metadata = body.metadata or {}
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequestError(
            f"Invalid 'metadata': at most {MAX_METADATA_KEYS} keys.", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequestError(
                "Invalid 'metadata': keys are at most 64 characters, values 512.",
                param="metadata",
            )


def _object(state: AppState, row) -> dict:
    return store.batch_object(row, store.counts(state.db, [row])[row.id])


@router.post("/batches", responses=ERROR_RESPONSES)
async def create_batch(
    body: BatchRequest,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    _check(body)
    file = await run_in_threadpool(
        files.get_file, state.db, principal, body.input_file_id, "input_file_id"
    )
    if file.purpose != "batch":
        raise InvalidRequestError(
            f"File {file.id} has purpose '{file.purpose}'; a batch reads a file uploaded "
            "with purpose 'batch'.",
            param="input_file_id",
            code="invalid_file",
        )
    row = await run_in_threadpool(
        store.create,
        state.db,
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        endpoint=body.endpoint,
        input_file_id=file.id,
        completion_window=body.completion_window,
        metadata=body.metadata,
    )
    if state.batch_worker is not None:
        state.batch_worker.wake()
    return await run_in_threadpool(_object, state, row)


@router.get("/batches", responses=ERROR_RESPONSES)
async def list_batches(
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    def page() -> dict:
        rows, has_more = store.list_batches(state.db, principal, after=after, limit=limit)
        counts = store.counts(state.db, rows)
        return cursor_page([store.batch_object(r, counts[r.id]) for r in rows], has_more)

    return await run_in_threadpool(page)


@router.get("/batches/{batch_id}", responses=ERROR_RESPONSES)
async def retrieve_batch(
    batch_id: str,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(store.get, state.db, principal, batch_id)
    return await run_in_threadpool(_object, state, row)


@router.post("/batches/{batch_id}/cancel", responses=ERROR_RESPONSES)
async def cancel_batch(
    batch_id: str,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(store.cancel, state.db, principal, batch_id)
    if state.batch_worker is not None:
        state.batch_worker.wake()
    return await run_in_threadpool(_object, state, row)
