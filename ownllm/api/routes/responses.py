"""The Responses API.

    POST   /v1/responses                          create (JSON, or typed events with stream)
    GET    /v1/responses/{id}                     a stored response
    DELETE /v1/responses/{id}
    GET    /v1/responses/{id}/input_items         its input items: ?after= &limit= &order=

Creating runs the one inference path (`ownllm.api.response_run`); the others read the
tenant's stored responses (`ownllm.gateway.stored_responses`): another tenant's response
does not exist (404).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ownllm.api.pages import cursor_page
from ownllm.api.response_run import serve_response
from ownllm.api.response_schemas import ResponseRequest
from ownllm.api.schemas import ERROR_RESPONSES
from ownllm.api.state import AppState, get_state
from ownllm.errors import InvalidRequestError, ServerError
from ownllm.gateway import stored_responses
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal

router = APIRouter(prefix="/v1/responses", tags=["responses"])
MAX_LIMIT = 100
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON or SSE"}}


def _db(state: AppState) -> Any:
    if state.db is None:
        raise ServerError("This server has no database; stored responses need one.")
    return state.db


@router.post("", responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_response(
    body: ResponseRequest,
    request: Request,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
    principal: Principal = Depends(require_scope("inference")),
) -> Response:
    """OpenAI's Responses API: a `response` object, or its events with `stream: true`."""
    return await serve_response(state, gateway, principal, body, request)


@router.get("/{response_id}")
async def get_response(
    response_id: str,
    stream: bool = Query(False),
    include: list[str] | None = Query(None),
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    if stream:
        raise InvalidRequestError(
            "streaming a stored response again is not supported (no background responses)",
            param="stream",
        )
    if include:
        raise InvalidRequestError("include is not supported", param="include")
    row = await run_in_threadpool(stored_responses.get_response, _db(state), principal,
                                  response_id)  # fmt: skip
    return row.response


@router.delete("/{response_id}")
async def delete_response(
    response_id: str,
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    await run_in_threadpool(stored_responses.delete_response, _db(state), principal, response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    after: str | None = Query(None, description="id of the last item of the previous page"),
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    order: Literal["asc", "desc"] = Query("desc"),
    include: list[str] | None = Query(None),
    principal: Principal = Depends(require_scope("inference")),
    state: AppState = Depends(get_state),
) -> dict:
    if include:
        raise InvalidRequestError("include is not supported", param="include")
    row = await run_in_threadpool(stored_responses.get_response, _db(state), principal,
                                  response_id)  # fmt: skip
    items, has_more = stored_responses.input_items_page(row, after=after, limit=limit, order=order)
    return cursor_page(items, has_more)
