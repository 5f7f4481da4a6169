"""From a parsed OpenAI request to an `InferenceCall`, its token ids and GenerateRequests.

- `chat_call` / `completion_call`: the checks that span fields (each a 400 naming its
  `param`), model resolution (base id, `ft:` model or adapter name, plus the `adapters`
  extension) and the sampling parameters: what the request sends, else the served model's
  generation defaults (`ownllm.models.generation`), else OpenAI's.
- `check_text_size`: a cap on the characters of one request, before any is read.
- `tokenise`: render the chat template (or encode the prompts), check the context length
  and fill the default `max_tokens` (the rest of the context, as OpenAI does for chat).
  A prompt whose characters certainly need more tokens than the context holds is refused
  without tokenising it (`Tokenizer.min_num_tokens`); a long one is tokenised in a worker
  thread, so other requests and /health keep being answered meanwhile.
- `generate_requests`: one `GenerateRequest` per prompt, with the JSON constraint for
  `response_format` built off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace
from typing import Any

from ownllm import __version__
from ownllm.api.schemas import (
    MAX_ADAPTERS,
    AdapterRef,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
)
from ownllm.api.state import AppState
from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
from ownllm.config import GenerationDefaults
from ownllm.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from ownllm.gateway.hooks import InferenceCall
from ownllm.gateway.principal import Principal
from ownllm.ids import new_id

MAX_PROMPTS = 128
MAX_CHOICES = 128
# Text of one request, whatever the model: beyond a 128k-token context of ordinary text
# (~4 characters a token), and still a few seconds of tokeniser time in a worker thread.
MAX_REQUEST_CHARS = 1 << 22
# Shorter prompts are tokenised on the event loop (a fraction of a millisecond): the hop to
# a worker thread and back costs more, 1-2 ms at p50 and tens at p99 under load.
INLINE_MAX_CHARS = 2_000


def system_fingerprint(state: AppState) -> str:
    """Changes when the weights or the ownllm version change (OpenAI's meaning)."""
    fp = state.extras.get("system_fingerprint")
    if fp is None:
        info = state.backend.model_info if state.backend is not None else None
        weights = (info.weights_sha256 if info else "") or state.model_id
        fp = "fp_" + hashlib.sha256(f"{weights}:{__version__}".encode()).hexdigest()[:10]
        state.extras["system_fingerprint"] = fp
    return fp


def max_model_len(state: AppState) -> int:
    if state.backend is None:
        raise OverloadedError("the model is still loading; retry shortly", retry_after=5)
    return state.backend.model_info.max_model_len


# -- models -----------------------------------------------------------------------------------


def _resolve_adapter(state: AppState, principal: Principal, name: str, param: str) -> str:
    """The registry id of adapter `name` (an `ft:` model, adapter name or id) for this
    principal; another tenant's private adapter does not exist (404)."""
    record = None
    if state.db is not None:
        from ownllm.adapters.registry import resolve_model

        record = resolve_model(state.db, principal, name)
    if record is None:
        raise ModelNotFoundError(f"The model '{name}' does not exist.", param=param)
    return record.id


def resolve_adapters(
    state: AppState, principal: Principal, model: str, extra: list[AdapterRef] | None
) -> tuple[AdapterWeight, ...]:
    """The adapters a request runs with: `model` itself when it names one, then `adapters`."""
    adapters = []
    if model != state.model_id:
        adapters.append(AdapterWeight(_resolve_adapter(state, principal, model, "model")))
    for i, ref in enumerate(extra or ()):
        adapter_id = _resolve_adapter(state, principal, ref.id, f"adapters[{i}].id")
        adapters.append(AdapterWeight(adapter_id, ref.weight))
    if len(adapters) > MAX_ADAPTERS:
        raise InvalidRequestError(
            f"at most {MAX_ADAPTERS} adapters can be stacked on one request "
            "(the model's own adapter counts)",
            param="adapters",
        )
    return tuple(adapters)


# -- requests ---------------------------------------------------------------------------------


def _common_checks(body: SamplingFields) -> None:
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    if body.logit_bias:
        raise InvalidRequestError("logit_bias is not supported", param="logit_bias")


def _pick(sent: Any, default: Any, neutral: Any) -> Any:
    """The request's value when it sent one, else the model's default, else `neutral`."""
    if sent is not None:
        return sent
    return neutral if default is None else default


def _sampling(
    body: SamplingFields,
    max_tokens: int | None,
    logprobs: int | None,
    defaults: GenerationDefaults,
) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        max_tokens=max_tokens or 0,  # 0: the rest of the context, filled by tokenise()
        temperature=_pick(body.temperature, defaults.temperature, 1.0),
        top_p=_pick(body.top_p, defaults.top_p, 1.0),
        top_k=_pick(body.top_k, defaults.top_k, 0),
        min_p=_pick(body.min_p, defaults.min_p, 0.0),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=_pick(body.repetition_penalty, defaults.repetition_penalty, 1.0),
        seed=body.seed,
        stop=stop,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        n=body.n,
    )


def chat_call(state: AppState, principal: Principal, body: ChatCompletionRequest) -> InferenceCall:
    _common_checks(body)
    if body.tools:
        raise InvalidRequestError("tools (function calling) are not supported yet", param="tools")
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    messages = []
    for i, m in enumerate(body.messages):
        if m.content is None and m.role != "assistant":
            raise InvalidRequestError(
                f"messages[{i}].content is required for role {m.role!r}",
                param=f"messages[{i}].content",
            )
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": m.text()})
    response_format = None
    if body.response_format is not None and body.response_format.type != "text":
        rf = body.response_format
        response_format = {"type": rf.type}
        if rf.type == "json_schema":
            if rf.json_schema is None:
                raise InvalidRequestError(
                    "response_format.json_schema is required for type json_schema",
                    param="response_format.json_schema",
                )
            response_format["json_schema"] = {
                "name": rf.json_schema.name,
                "schema": rf.json_schema.schema_ or {},
            }
    max_tokens = body.max_completion_tokens or body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return InferenceCall(
        request_id=new_id("chatcmpl"),
        endpoint="chat.completions",
        principal=principal,
        model=body.model,
        base_model=state.model_id,
        adapters=resolve_adapters(state, principal, body.model, body.adapters),
        sampling=_sampling(body, max_tokens, logprobs, state.generation_defaults),
        messages=messages,
        is_stream=body.stream,
        user=body.user,
        metadata=dict(body.metadata or {}),
        store=body.store,
        response_format=response_format,
        started_at=time.monotonic(),
    )


def completion_call(
    state: AppState, principal: Principal, body: CompletionRequest
) -> InferenceCall:
    _common_checks(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequestError(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    if len(prompts) * body.n > MAX_CHOICES:
        raise InvalidRequestError(f"n × number of prompts must be at most {MAX_CHOICES}", param="n")
    if body.suffix:
        raise InvalidRequestError("suffix (insertion) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise InvalidRequestError("best_of other than n is not supported", param="best_of")
    if body.echo and body.logprobs is not None:
        raise InvalidRequestError(
            "echo with logprobs (prompt logprobs) is not supported", param="echo"
        )
    return InferenceCall(
        request_id=new_id("cmpl"),
        endpoint="completions",
        principal=principal,
        model=body.model,
        base_model=state.model_id,
        adapters=resolve_adapters(state, principal, body.model, body.adapters),
        sampling=_sampling(body, body.max_tokens, body.logprobs, state.generation_defaults),
        prompts=prompts,
        is_stream=body.stream,
        user=body.user,
        started_at=time.monotonic(),
    )


# -- tokens -----------------------------------------------------------------------------------


def _text_param(call: InferenceCall) -> str:
    if call.messages is not None:
        return "messages"
    return "prompt" if call.prompts is not None else "input"


def num_text_chars(call: InferenceCall) -> int:
    """Characters of the call's text: message contents, prompts or embedding inputs."""
    if call.messages is not None:
        return sum(len(m.get("content") or "") for m in call.messages)
    return sum(map(len, call.prompts or call.inputs or ()))


def check_text_size(call: InferenceCall) -> None:
    """At most MAX_REQUEST_CHARS characters of text per request (400, as OpenAI words its
    own cap), checked before the text is read."""
    num_chars = num_text_chars(call)
    if num_chars > MAX_REQUEST_CHARS:
        param = _text_param(call)
        raise InvalidRequestError(
            f"Invalid '{param}': text too long. Expected at most {MAX_REQUEST_CHARS} "
            f"characters per request, but got {num_chars} instead.",
            param=param,
            code="string_above_max_length",
        )


async def tokenise(state: AppState, call: InferenceCall) -> None:
    """Fill `call.prompt_token_ids`; check the context; default max_tokens to the rest of it."""
    limit = max_model_len(state)
    if num_text_chars(call) <= INLINE_MAX_CHARS:
        call.prompt_token_ids = _token_ids(state.tokenizer, call, limit)
    else:
        call.prompt_token_ids = await asyncio.to_thread(_token_ids, state.tokenizer, call, limit)
    param = _text_param(call)
    for i, ids in enumerate(call.prompt_token_ids if call.prompts is not None else ()):
        if not ids:
            where = "prompt" if len(call.prompt_token_ids) == 1 else f"prompt[{i}]"
            raise InvalidRequestError("the prompt must not be empty", param=where)
    longest = max(len(ids) for ids in call.prompt_token_ids)
    max_tokens = call.sampling.max_tokens or limit - longest
    if longest + max_tokens > limit or max_tokens < 1:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{longest + max(max_tokens, 1)} tokens ({longest} in the {param}, "
            f"{max(max_tokens, 1)} for the completion). Please reduce the length of the "
            f"{param} or of max_tokens.",
            param=param,
        )
    if max_tokens != call.sampling.max_tokens:
        call.sampling = replace(call.sampling, max_tokens=max_tokens)


def _token_ids(tokenizer: Any, call: InferenceCall, limit: int) -> list[list[int]]:
    """The prompts' token ids, after a bound from their characters (on the rendered chat:
    a template may trim or drop text) says each can fit beside the completion."""
    if call.messages is not None:
        text = tokenizer.render_chat(call.messages)
        _check_fits(tokenizer.min_num_tokens(text), call, limit, "messages")
        return [tokenizer.encode_chat_text(text)]
    prompts = call.prompts or []
    for prompt in prompts:
        _check_fits(tokenizer.min_num_tokens(prompt), call, limit, "prompt")
    return [tokenizer.encode(p, add_special_tokens=True) for p in prompts]


def _check_fits(min_tokens: int, call: InferenceCall, limit: int, param: str) -> None:
    completion = call.sampling.max_tokens or 1
    if min_tokens + completion > limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"at least {min_tokens + completion} tokens (at least {min_tokens} in the "
            f"{param}, {completion} for the completion). Please reduce the length of the "
            f"{param} or of max_tokens.",
            param=param,
        )


async def generate_requests(state: AppState, call: InferenceCall) -> list[GenerateRequest]:
    constraint = None
    if call.response_format is not None:
        constraint = await asyncio.to_thread(_constraint, state, call.response_format)
    ids = call.prompt_token_ids
    return [
        GenerateRequest(
            request_id=call.request_id if len(ids) == 1 else f"{call.request_id}-{k}",
            prompt_token_ids=prompt_ids,
            sampling=call.sampling,
            adapters=call.adapters,
            cache_scope=call.principal.tenant_id,
            constraint=constraint if k == 0 else constraint.fork() if constraint else None,
        )
        for k, prompt_ids in enumerate(ids)
    ]


def _constraint(state: AppState, response_format: dict[str, Any]) -> Any:
    from ownllm.engine.constraints import constraint_for_response_format

    vocab_size = state.backend.model_info.vocab_size
    return constraint_for_response_format(state.tokenizer, response_format, vocab_size)
