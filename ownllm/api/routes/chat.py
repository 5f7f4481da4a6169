"""POST /v1/chat/completions: parse, then the shared inference pipeline.

With the ownllm extension `file_search` ({"vector_store_ids": [...], "max_num_results": N,
"filters", "ranking_options"}) the answer is grounded in the tenant's vector stores
(`ownllm.api.retrieval.FileSearchRun`) and its message carries `citations`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ownllm.api.calls import chat_call, system_fingerprint
from ownllm.api.formats import ChatFormat
from ownllm.api.generation import GenerationRun
from ownllm.api.inference import serve
from ownllm.api.retrieval import CitingChatFormat, FileSearchRun
from ownllm.api.schemas import ERROR_RESPONSES, ChatCompletion, ChatCompletionRequest
from ownllm.api.state import AppState, get_state
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal
from ownllm.models.tool_format import call_syntax

router = APIRouter(prefix="/v1", tags=["inference"])

STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON or SSE"}}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
    principal: Principal = Depends(require_scope("inference")),
) -> Response:
    """OpenAI chat completions: JSON, or server-sent events with `stream: true`."""
    return await serve(chat_run(state, gateway, principal, body), request)


def chat_run(
    state: AppState, gateway: Gateway, principal: Principal, body: ChatCompletionRequest
) -> GenerationRun:
    """The run of one chat request (a live one, or a batch line)."""
    call = chat_call(state, principal, body)
    fmt = (CitingChatFormat if body.file_search is not None else ChatFormat)(
        call.request_id,
        call.model,
        int(time.time()),
        system_fingerprint(state),
        has_logprobs=body.logprobs,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        tool_syntax=call_syntax(state.tokenizer) if call.tools is not None else None,
    )
    fmt.route = call.route
    if body.file_search is not None:
        return FileSearchRun(call, fmt, state, gateway, body.file_search)
    return GenerationRun(call, fmt, state, gateway)
