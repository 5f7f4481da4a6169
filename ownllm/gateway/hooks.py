"""Plug points of the inference pipeline: what limits, guardrails, usage and capture see.

`ownllm.api.inference` runs every inference request (chat, completions, embeddings)
through the same stages; at each one the `Gateway` (`ownllm.gateway.gateway`) calls its
hooks, in order:

    parse → principal → resolve model
      → admit_request(call)    request limits (rpm, concurrency), before the prompt is
                               read: call.prompt_token_ids is still empty; raise
                               RateLimitError
      → a cap on characters; tokenise (or count), long prompts in a worker thread,
        refused without tokenising when their characters cannot fit the context
      → admit_tokens(call)     token limits (tpm, monthly budget) on the real count
                               (call.max_total_tokens): raise RateLimitError /
                               InsufficientQuotaError
      → check_input(call)      input guard: raise ContentPolicyError, or replace
                               call.messages / call.prompts / call.inputs (redaction;
                               re-tokenised). A call no remote backend may take is
                               already starting on its backend (aborted on either)
      → the backend; for generation, per delta:
        check_output(call, index, text)   output guard on each new piece of text of
                               choice `index`: return the text to send (maybe
                               redacted, "" while held back), or None to end that
                               choice with finish_reason "content_filter"
        flush_output(call, index) when a choice ends: (held-back text, is_cut);
                               is_cut ends it with finish_reason "content_filter"
      → finish(call, outcome)  usage ledger, data capture, counters; always called once,
                               also after errors and client disconnects

A hook is an `InferenceHook` that overrides the stages it takes part in; the Gateway
skips the others, so a stage no hook takes costs nothing per token. Hooks receive plain
dataclasses: no FastAPI, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ownllm.backends.base import AdapterWeight, SamplingParams
from ownllm.gateway.principal import Principal
from ownllm.models.tool_format import ToolRequest


@dataclass
class InferenceCall:
    """One inference request (chat, completions, embeddings) on its way through the gateway."""

    request_id: str  # chatcmpl-… / cmpl-… / embd-…
    endpoint: str  # "chat.completions" | "completions" | "embeddings"
    principal: Principal
    model: str  # as the client named it (embeddings: the one id of its aliases)
    base_model: str
    adapters: tuple[AdapterWeight, ...]  # registry ids and weights; empty: the base model
    sampling: SamplingParams | None  # None: the call generates nothing (embeddings)
    # chat: [{"role", "content"}], an assistant's "tool_calls" and a tool's "tool_call_id" too
    messages: list[dict[str, Any]] | None = None
    prompts: list[str] | None = None  # completions
    inputs: list[str] | None = None  # embeddings: the texts to embed
    # one list per prompt or input, in the tokenizer of the model that reads it
    prompt_token_ids: list[list[int]] = field(default_factory=list)
    is_stream: bool = False
    user: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    store: bool | None = None  # OpenAI `store`; None: the key/tenant/server default decides
    response_format: dict[str, Any] | None = None
    tools: ToolRequest | None = None  # function tools the model is shown and may call
    started_at: float = 0.0  # time.monotonic() when the request arrived
    batch_id: str | None = None  # a line of this batch: batch priority, marked in the ledger
    # a router alias's pick: {"alias", "adapter_id" (None: the base), "adapter", "similarity",
    # "stage": "static" or "full"}
    route: dict[str, Any] | None = None

    @property
    def adapter_ids(self) -> tuple[str, ...]:
        return tuple(a.adapter_id for a in self.adapters)

    @property
    def text_param(self) -> str:
        """The request field that holds the call's text, for errors about it."""
        if self.messages is not None:
            return "messages"
        return "prompt" if self.prompts is not None else "input"

    @property
    def num_text_chars(self) -> int:
        """Characters of the call's text: message contents, prompts or embedding inputs."""
        if self.messages is not None:
            num_chars = sum(len(m.get("content") or "") for m in self.messages)
            if self.tools is not None:  # the schemas are shown to the model too
                num_chars += sum(map(len, self.tools.schemas.values()))
            return num_chars
        return sum(map(len, self.prompts or self.inputs or ()))

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompt_token_ids)

    @property
    def max_total_tokens(self) -> int:
        """Upper bound of tokens this call can consume (for token-per-minute limits)."""
        if self.sampling is None:
            return self.num_prompt_tokens
        num_choices = self.sampling.n * len(self.prompt_token_ids)
        return self.num_prompt_tokens + num_choices * self.sampling.max_tokens


@dataclass
class ChoiceOutcome:
    index: int
    text: str
    finish_reason: str | None
    num_output_tokens: int


@dataclass
class InferenceOutcome:
    """How a call ended: what was generated, what it cost, how long it took."""

    choices: list[ChoiceOutcome]  # generated choices; none for embeddings
    num_prompt_tokens: int  # what the backend read: 0 when it never answered
    num_cached_tokens: int
    num_output_tokens: int
    status_code: int  # 200, or the error's status
    error_code: str | None = None
    is_complete: bool = False  # the backend finished: every choice ended, every input embedded
    is_client_gone: bool = False  # the client disconnected mid-stream
    ttft_s: float | None = None
    latency_s: float = 0.0


class InferenceHook:
    """A gateway part on the inference path. Each method is one stage (see the module
    docstring for when it runs); a subclass overrides those it takes part in, and the rest
    stay these no-ops, which the Gateway does not call."""

    async def admit_request(self, call: InferenceCall) -> None:
        return None

    async def admit_tokens(self, call: InferenceCall) -> None:
        return None

    async def check_input(self, call: InferenceCall) -> None:
        return None

    async def check_output(self, call: InferenceCall, index: int, text: str) -> str | None:
        return text

    async def flush_output(self, call: InferenceCall, index: int) -> tuple[str, bool]:
        return "", False

    async def finish(self, call: InferenceCall, outcome: InferenceOutcome) -> None:
        return None

    def takes(self, stage: str) -> bool:
        """Whether this hook overrides `stage` (one of the method names above)."""
        return getattr(type(self), stage) is not getattr(InferenceHook, stage)
