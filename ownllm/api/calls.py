"""From a parsed OpenAI request to an `InferenceCall` (in the route, before the path).

`chat_call` / `completion_call`: the checks that span fields (each a 400 naming its
`param`), model resolution (base id, the tenant's model alias, `ft:` model or adapter name,
plus the `adapters` extension) and the sampling parameters: what the request sends, else the served model's
generation defaults (`ownllm.models.generation`), else OpenAI's. The call then takes the
inference path (`ownllm.api.inference.serve`); nothing here runs on it.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from ownllm import __version__
from ownllm.adapters.routing import route_text
from ownllm.api.schemas import (
    MAX_ADAPTERS,
    AdapterRef,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
)
from ownllm.api.state import AppState
from ownllm.api.tools import history_tool_calls, parse_tools
from ownllm.backends.base import AdapterWeight, SamplingParams
from ownllm.config import GenerationDefaults
from ownllm.errors import InvalidRequestError, ModelNotFoundError
from ownllm.gateway.hooks import InferenceCall
from ownllm.gateway.principal import Principal
from ownllm.gateway.routing import Router
from ownllm.ids import new_id

MAX_PROMPTS = 128
MAX_CHOICES = 128
MAX_LOGIT_BIAS = 1024  # tokens one request may bias (OpenAI documents no bound; ownllm's)


def system_fingerprint(state: AppState) -> str:
    """Changes when the weights or the ownllm version change (OpenAI's meaning)."""
    info = state.backend.model_info if state.backend is not None else None
    weights = (info.weights_sha256 if info else "") or state.model_id
    return "fp_" + hashlib.sha256(f"{weights}:{__version__}".encode()).hexdigest()[:10]


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


def _resolve_model(
    state: AppState, principal: Principal, model: str, text: str
) -> tuple[list[AdapterWeight], dict[str, Any] | None]:
    """The adapters `model` runs: the version the caller's alias `model` points at, read
    once here so the request finishes on it whatever a promotion does meanwhile (none for
    an alias of the base), or for a router alias the version nearest `text`; else the
    adapter `model` names. With the router's pick, when there was one."""
    alias = adapter_id = None
    if state.db is not None:
        from ownllm.adapters.aliases import find_model

        alias, adapter_id = find_model(state.db, principal, model)
    if alias is not None and alias.router is not None:
        return _route(state, alias, text)
    if alias is not None:
        return ([AdapterWeight(alias.target)] if alias.target is not None else []), None
    if adapter_id is None:
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
    return [AdapterWeight(adapter_id)], None


def _route(state: AppState, alias, text: str) -> tuple[list[AdapterWeight], dict[str, Any]]:
    """A router alias's pick for `text` (`ownllm.adapters.routing`): by its static vector
    when that is clear, else the shipped MiniLM embeds it on its one-thread worker (loaded
    on the first such request after a start, a few seconds once)."""
    embedding = state.embedding_model
    static = embedding.static() if alias.router.has_fast_stage else None
    version, similarity, stage = alias.router.route(
        text or " ",
        (lambda t: static.embed([t])[0]) if static is not None else None,
        lambda t: embedding.embed_one_thread([t])[0],
    )
    route = {
        "alias": alias.name,
        "adapter_id": version.adapter_id if version is not None else None,
        "adapter": version.name if version is not None else state.model_id,
        "similarity": round(similarity, 4),
        "stage": stage,  # "static" (token vectors) or "full" (the MiniLM forward)
    }
    return ([AdapterWeight(version.adapter_id)] if version is not None else []), route


def resolve_adapters(
    state: AppState,
    principal: Principal,
    model: str,
    extra: list[AdapterRef] | None,
    text: str = "",
) -> tuple[tuple[AdapterWeight, ...], dict[str, Any] | None]:
    """The adapters a request runs with: `model` itself when it names one (a router alias:
    the version nearest `text`, the request's prompt), then `adapters`; and the router's
    pick. A model the hybrid policy routes to a remote API for this tenant runs none."""
    backend = state.backend
    if isinstance(backend, Router) and backend.routes_remotely(principal.tenant_id, model):
        if extra:
            raise InvalidRequestError(
                f"adapters cannot run on '{model}': it is served by a remote API",
                param="adapters",
            )
        return (), None
    adapters, route = [], None
    if model != state.model_id:
        named, route = _resolve_model(state, principal, model, text)
        adapters.extend(named)
    for i, ref in enumerate(extra or ()):
        adapter_id = _resolve_adapter(state, principal, ref.id, f"adapters[{i}].id")
        adapters.append(AdapterWeight(adapter_id, ref.weight))
    if len(adapters) > MAX_ADAPTERS:
        raise InvalidRequestError(
            f"at most {MAX_ADAPTERS} adapters can be stacked on one request "
            "(the model's own adapter counts)",
            param="adapters",
        )
    return tuple(adapters), route


# -- requests ---------------------------------------------------------------------------------


def _common_checks(body: SamplingFields) -> None:
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true", param="stream_options"
        )


def logit_bias(sent: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` (token id as a string -> -100..100) as sorted (id, bias) pairs;
    a key that is not a token id or a value out of range is a 400 naming `logit_bias`.
    Ids past the model's vocabulary are refused where it is known (`generate_requests`)."""
    if not sent:
        return ()
    if len(sent) > MAX_LOGIT_BIAS:
        raise InvalidRequestError(
            f"logit_bias may set at most {MAX_LOGIT_BIAS} tokens, got {len(sent)}",
            param="logit_bias",
        )
    pairs: dict[int, float] = {}
    for key, value in sent.items():
        text = key.strip()
        if not text.isdecimal() or not text.isascii() or len(text) > 12:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids (non-negative integers), got {key!r}",
                param="logit_bias",
            )
        if not math.isfinite(value) or not -100.0 <= value <= 100.0:
            raise InvalidRequestError(
                f"logit_bias[{key!r}] must be between -100 and 100, got {value}",
                param="logit_bias",
            )
        pairs[int(text)] = float(value)
    return tuple(sorted(pairs.items()))


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
        max_tokens=max_tokens or 0,  # 0: the rest of the context (ownllm.api.tokens)
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
        logit_bias=logit_bias(body.logit_bias),
    )


def chat_call(state: AppState, principal: Principal, body: ChatCompletionRequest) -> InferenceCall:
    _common_checks(body)
    tools = parse_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
    messages = [_chat_message(i, m) for i, m in enumerate(body.messages)]
    rf_type = body.response_format.type if body.response_format is not None else "text"
    if tools is not None and rf_type != "text":
        raise InvalidRequestError(
            "response_format json_object or json_schema cannot be combined with tools: "
            "a tool call's arguments follow the tool's schema already; leave tools out "
            "for a JSON answer",
            param="response_format",
        )
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
    text = route_text(messages, None)
    adapters, route = resolve_adapters(state, principal, body.model, body.adapters, text)
    return InferenceCall(
        request_id=new_id("chatcmpl"),
        endpoint="chat.completions",
        principal=principal,
        model=body.model,
        base_model=state.model_id,
        adapters=adapters,
        route=route,
        sampling=_sampling(body, max_tokens, logprobs, state.generation_defaults),
        messages=messages,
        is_stream=body.stream,
        user=body.user,
        metadata=dict(body.metadata or {}),
        store=body.store,
        response_format=response_format,
        tools=tools,
        started_at=time.monotonic(),
    )


def _chat_message(i: int, m: ChatMessage) -> dict[str, Any]:
    """One request message as the renderer takes it (developer is system)."""
    if m.content is None and m.role != "assistant":
        raise InvalidRequestError(
            f"messages[{i}].content is required for role {m.role!r}",
            param=f"messages[{i}].content",
        )
    message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
    message["content"] = m.text()
    if m.tool_calls is not None:
        if m.role != "assistant":
            raise InvalidRequestError(
                f"messages[{i}].tool_calls is only allowed on assistant messages",
                param=f"messages[{i}].tool_calls",
            )
        message["tool_calls"] = history_tool_calls(m.tool_calls, f"messages[{i}].tool_calls")
    if m.role == "tool":
        if not m.tool_call_id:
            raise InvalidRequestError(
                f"messages[{i}].tool_call_id is required for role 'tool'",
                param=f"messages[{i}].tool_call_id",
            )
        message["tool_call_id"] = m.tool_call_id
    if m.name is not None and m.role == "tool":
        message["name"] = m.name
    return message


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
    adapters, route = resolve_adapters(
        state, principal, body.model, body.adapters, route_text(None, prompts)
    )
    return InferenceCall(
        request_id=new_id("cmpl"),
        endpoint="completions",
        principal=principal,
        model=body.model,
        base_model=state.model_id,
        adapters=adapters,
        route=route,
        sampling=_sampling(body, body.max_tokens, body.logprobs, state.generation_defaults),
        prompts=prompts,
        is_stream=body.stream,
        user=body.user,
        started_at=time.monotonic(),
    )
