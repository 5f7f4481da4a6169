"""Tokenise a generation call: its prompts' token ids, the context check, the default
`max_tokens` (the rest of the context, as OpenAI does for chat).

The chat template is rendered (or the prompts encoded) only after a bound from the text's
characters says each prompt can fit beside the completion (`Tokenizer.min_num_tokens`):
a prompt that certainly cannot is refused without tokenising it. A long one is tokenised
in a worker thread, so other requests and /health keep being answered meanwhile.
Embedding inputs are counted by the embedding model's own tokenizer (its route).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from ownllm.errors import ContextLengthExceededError, InvalidRequestError, OverloadedError
from ownllm.gateway.hooks import InferenceCall
from ownllm.models.tool_format import render_conversation

# Shorter prompts are tokenised on the event loop (a fraction of a millisecond): the hop to
# a worker thread and back costs more, 1-2 ms at p50 and tens at p99 under load.
INLINE_MAX_CHARS = 2_000


def max_model_len(backend: Any) -> int:
    """The served model's context length; 503 while the backend is not started yet."""
    if backend is None:
        raise OverloadedError("the model is still loading; retry shortly", retry_after=5)
    return backend.model_info.max_model_len


async def tokenise(call: InferenceCall, tokenizer: Any, limit: int) -> None:
    """Fill `call.prompt_token_ids`; check the context of `limit` tokens; default
    max_tokens to the rest of it."""
    if call.num_text_chars <= INLINE_MAX_CHARS:
        call.prompt_token_ids = _token_ids(tokenizer, call, limit)
    else:
        call.prompt_token_ids = await asyncio.to_thread(_token_ids, tokenizer, call, limit)
    param = call.text_param
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
        tools = call.tools.tools if call.tools is not None else None
        text = render_conversation(tokenizer, call.messages, tools)
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
