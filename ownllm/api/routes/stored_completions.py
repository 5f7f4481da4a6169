"""Stored chat completions (OpenAI's `store: true`) and feedback on them.

    GET    /v1/chat/completions                    list: ?model= &metadata[k]=v &after= &limit= &order=
    GET    /v1/chat/completions/{id}               one stored completion
    GET    /v1/chat/completions/{id}/messages      its request messages, paginated
    POST   /v1/chat/completions/{id}               update its metadata (OpenAI)
    DELETE /v1/chat/completions/{id}
    POST   /v1/chat/completions/{id}/feedback      ownllm extension: {"rating": 1-5, "correction": "…"}

POST /v1/chat/completions itself (inference) lives in `routes/chat.py`. Another
tenant's completion does not exist (404); the admin sees every tenant's.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ownllm.api.pages import cursor_page
from ownllm.api.state import AppState, get_state
from ownllm.errors import InvalidRequestError, ServerError
from ownllm.gateway import capture
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal

router = APIRouter(prefix="/v1/chat/completions", tags=["stored completions"])
MAX_LIMIT = 100


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, str] = Field(..., max_length=16)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: int | None = Field(None, ge=capture.RATING_MIN, le=capture.RATING_MAX)
    correction: str | None = Field(None, max_length=200_000)


def _db(state: AppState) -> Any:
    if state.db is None:
        raise ServerError("This server has no database; stored completions need one.")
    return state.db


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters (how the OpenAI client sends a dict)."""
    out = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            out[name[len("metadata[") : -1]] = value
    return out


@router.get("")
async def list_stored(
    request: Request,
    model: str | None = Query(None),
    after: str | None = Query(None, description="id of the last completion of the previous page"),
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    order: Literal["asc", "desc"] = Query("asc"),
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    rows, has_more = await run_in_threadpool(
        capture.list_completions,
        _db(state),
        principal,
        model=model,
        metadata=_metadata_filter(request),
        after=after,
        limit=limit,
        order=order,
    )
    return cursor_page([capture.completion_object(r) for r in rows], has_more)


@router.get("/{completion_id}")
async def get_stored(
    completion_id: str,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(capture.get_completion, _db(state), principal, completion_id)
    return capture.completion_object(row)


@router.get("/{completion_id}/messages")
async def get_messages(
    completion_id: str,
    after: str | None = Query(None),
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    order: Literal["asc", "desc"] = Query("asc"),
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(capture.get_completion, _db(state), principal, completion_id)
    # `refusal` is required by the spec's message schema; a request message never has one
    messages = [
        {"id": f"{row.id}-{i}", "refusal": None, **m}
        for i, m in enumerate(capture.request_messages(row))
    ]
    if order == "desc":
        messages.reverse()
    if after is not None:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise InvalidRequestError(f"No message with id '{after}' in this completion.",
                                      param="after")  # fmt: skip
        messages = messages[ids.index(after) + 1 :]
    return cursor_page(messages[:limit], len(messages) > limit)


@router.post("/{completion_id}")
async def update_stored(
    completion_id: str,
    body: MetadataUpdate,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    row = await run_in_threadpool(
        capture.update_metadata, _db(state), principal, completion_id, body.metadata
    )
    return capture.completion_object(row)


@router.delete("/{completion_id}")
async def delete_stored(
    completion_id: str,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    await run_in_threadpool(capture.delete_completion, _db(state), principal, completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


@router.post("/{completion_id}/feedback")
async def give_feedback(
    completion_id: str,
    body: Feedback,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
) -> dict:
    row = await run_in_threadpool(
        lambda: capture.set_feedback(
            _db(state),
            gateway.guard,
            principal,
            completion_id,
            rating=body.rating,
            correction=body.correction,
        )
    )
    return capture.completion_object(row)
