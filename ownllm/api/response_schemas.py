"""The Responses API request (`POST /v1/responses`) as a pydantic model.

Field names, defaults and bounds follow OpenAI. `input` items and `tools` are kept as
plain dicts here and checked item by item where they are translated
(`ownllm.api.response_calls`), so that a bad item is a 400 whose `param` points at it
(`input[2].content[0].type`), which a union of pydantic models cannot say.

Fields OpenAI defines that ownllm does not honour are refused by name (`REFUSED`), never
dropped: the request says what it needs and gets a 400 naming it. Fields no version of
OpenAI's API has are ignored, as on chat.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from ownllm.api.schemas import INT64_MAX, INT64_MIN, MAX_ADAPTERS, AdapterRef, _Request

# OpenAI fields ownllm cannot honour: field -> why, for the 400 (a value that asks for
# nothing, e.g. `background: false` or `include: []`, is accepted).
REFUSED = {
    "background": "background responses are not supported; omit it or send false",
    "conversation": "conversations objects are not supported; use previous_response_id",
    "prompt": "prompt templates are not supported; send input and instructions",
    "reasoning": "reasoning is not supported by this model",
    "top_logprobs": "top_logprobs is not supported on /v1/responses",
    "max_tool_calls": "max_tool_calls is not supported",
    "context_management": "context_management is not supported",
    "moderation": "moderation is not supported; guardrails are set by the server's policy",
    "prompt_cache_options": "prompt_cache_options is not supported",
    "image": "image options are not supported: the model reads and writes text only",
}
# values of refused fields that ask for nothing
_NEUTRAL = (False, [], {}, 0)


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Request):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseStreamOptions(_Request):
    include_obfuscation: bool = False  # no obfuscation is sent either way


class ResponseRequest(_Request):
    """POST /v1/responses. Extensions as on chat: `adapters`, `top_k`, `min_p`,
    `repetition_penalty`, `seed`, `ignore_eos`."""

    model_config = ConfigDict(extra="allow")  # to name refused OpenAI fields

    model: str = Field(min_length=1, max_length=512)
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    store: bool = True
    previous_response_id: str | None = Field(None, min_length=1, max_length=64)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)  # a hint; caching is automatic
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = None
    stream: bool = False
    stream_options: ResponseStreamOptions | None = None
    include: list[str] | None = None  # only "file_search_call.results"
    # extensions
    adapters: list[AdapterRef] | None = Field(None, max_length=MAX_ADAPTERS)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool = False

    def refused_field(self) -> tuple[str, str] | None:
        """(field, why) for the first OpenAI field the request uses that ownllm refuses."""
        for name, value in (self.model_extra or {}).items():
            if name in REFUSED and not any(value == v and type(value) is type(v)
                                           for v in _NEUTRAL):  # fmt: skip
                return name, REFUSED[name]
        return None
