"""POST /v1/completions (legacy text completions): parse, then the shared pipeline."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ownllm.api.calls import completion_call, system_fingerprint
from ownllm.api.formats import CompletionFormat
from ownllm.api.generation import GenerationRun
from ownllm.api.inference import serve
from ownllm.api.routes.chat import STREAM_RESPONSE
from ownllm.api.schemas import ERROR_RESPONSES, Completion, CompletionRequest
from ownllm.api.state import AppState, get_state
from ownllm.gateway.auth import require_scope
from ownllm.gateway.gateway import Gateway, get_gateway
from ownllm.gateway.principal import Principal

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post(
    "/completions",
    response_model=Completion,
    responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    state: AppState = Depends(get_state),
    gateway: Gateway = Depends(get_gateway),
    principal: Principal = Depends(require_scope("inference")),
) -> Response:
    """OpenAI legacy completions: `prompt` is a string or a list of strings."""
    return await serve(completion_run(state, gateway, principal, body), request)


def completion_run(
    state: AppState, gateway: Gateway, principal: Principal, body: CompletionRequest
) -> GenerationRun:
    """The run of one completions request (a live one, or a batch line)."""
    call = completion_call(state, principal, body)
    fmt = CompletionFormat(
        call.request_id,
        call.model,
        int(time.time()),
        system_fingerprint(state),
        has_logprobs=body.logprobs is not None,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        echo_prompts=call.prompts if body.echo else None,
        n=body.n,
    )
    fmt.route = call.route
    return GenerationRun(call, fmt, state, gateway)
