"""OpenAI wire format as pydantic models: what clients send and what they get back.

Field names, defaults and bounds follow OpenAI, so a bad value is a 400 whose `param`
names the field (`ownllm.api.errors` maps pydantic's errors). Checks that need more than
one field (top_logprobs without logprobs, stream_options without stream) live in
`ownllm.api.inference`, which raises `InvalidRequestError` with the right `param`.

Extensions beyond OpenAI (vLLM names where vLLM has one): `adapters` stacks up to four
LoRA adapters with weights, `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`.

Function tools (`tools`, `tool_choice`, `parallel_tool_calls`, assistant `tool_calls` and
`tool` messages) are checked in `ownllm.api.tools`, which names the exact `param`.

Unknown fields are ignored, as OpenAI does for forward compatibility. Left out: the
deprecated `functions` / `function_call`, audio and image inputs, `prediction`; a request
that uses a known one of them gets a 400 naming the field instead of being silently
half-served.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_ADAPTERS = 4
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class _Request(BaseModel):
    """A null field counts as left out, so it gets its default: OpenAI's spec makes the
    optional fields nullable (`"stream": null` is a spec-valid request, meaning no stream)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


# -- shared request parts --------------------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool = False


class AdapterRef(_Request):
    """Extension: one LoRA adapter (its name, id or `ft:` model) and its weight."""

    id: str = Field(min_length=1, max_length=256)
    weight: float = Field(1.0, ge=-4.0, le=4.0)


Stop = str | list[str] | None


def _check_stop(value: Stop) -> Stop:
    if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    strings = [value] if isinstance(value, str) else value or []
    if any(s == "" for s in strings):
        raise ValueError("stop sequences must not be empty")
    return value


class SamplingFields(_Request):
    """Sampling fields shared by chat and legacy completions (OpenAI bounds)."""

    model: str = Field(min_length=1, max_length=512)
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    logit_bias: dict[str, float] | None = None
    # extensions
    adapters: list[AdapterRef] | None = Field(None, max_length=MAX_ADAPTERS)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _valid_stop(cls, value: Stop) -> Stop:
        return _check_stop(value)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _numeric_bias(cls, value: Any) -> Any:
        # here, so that a bad value is an error of `logit_bias` itself, not of one key;
        # keys and ranges are checked by ownllm.api.calls.logit_bias
        if isinstance(value, dict):
            for key, bias in value.items():
                if isinstance(bias, bool) or not isinstance(bias, int | float):
                    raise ValueError(f"the bias of token {key!r} must be a number")
        return value


# -- chat completions -------------------------------------------------------------------------


class TextPart(_Request):
    type: str
    text: str | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"content parts of type {value!r} are not supported; use 'text'")
        return value


class ChatMessage(_Request):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # assistant; checked in ownllm.api.tools
    tool_call_id: str | None = Field(None, max_length=256)  # tool

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        if value not in CHAT_ROLES:
            raise ValueError(f"role must be one of {', '.join(CHAT_ROLES)}, not {value!r}")
        return value

    def text(self) -> str:
        """The message content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class JsonSchemaSpec(_Request):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class RankingOptions(_Request):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class FileSearchOptions(_Request):
    """The chat completions extension `file_search`: retrieve from these stores first and
    answer with the sources (`message.citations`)."""

    vector_store_ids: list[str] = Field(min_length=1, max_length=8)
    max_num_results: int = Field(5, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    file_search: FileSearchOptions | None = None  # extension: answer from vector stores


# -- legacy completions -----------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(...)
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=128)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value


# -- embeddings -------------------------------------------------------------------------------


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)


# -- responses (documented in /openapi.json; routes build the same shape) ----------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallOut(BaseModel):
    id: str  # call_…
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class GenerationDefaultsOut(BaseModel):
    """Extension: the sampling values a request gets for the fields it leaves out."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


class Model(BaseModel):
    """An OpenAI model object; the fields after `owned_by` are ownllm extensions."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = Field(None, description="The base model of an adapter")
    max_model_len: int | None = None
    adapter_id: str | None = None
    generation_defaults: GenerationDefaultsOut | None = Field(
        None,
        description="Sampling values used where a request leaves the field out (a value "
        "the request sends always wins): the model card's, the model's "
        "generation_config.json, or the operator's [model.generation] settings",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (400, "Invalid request: `param` names the field"),
        (401, "Missing or invalid API key"),
        (404, "Unknown model"),
        (429, "Rate limit or quota exceeded (Retry-After)"),
        (503, "Overloaded (Retry-After)"),
    )
}
"""The error responses every inference route documents in /openapi.json."""
