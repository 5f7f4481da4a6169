"""The typed messages between a caller and the engine: what to generate, what came out.

`GenerateRequest` (prompt ids, `SamplingParams`, adapters, cache scope, an
optional `TokenConstraint`) goes in; `Delta`s (whole UTF-8 text, token ids,
logprobs, finish reason) come out, and `EngineStats` tells how busy the engine
is. Plain dataclasses, no torch: the Backend protocol (`ownllm.backends.base`)
re-exports them so every backend — embedded, vLLM, remote — speaks the same
types.

Inside the embedded engine, the caller's thread hands the engine thread
`AddRequest`, `AbortRequest` and `EvictAdapter` commands through its inbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI names where OpenAI has one)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token + top-k alternatives
    n: int = 1
    # OpenAI's logit_bias: (token id, bias in [-100, 100]) pairs, sorted by token id; added to
    # the logits before sampling, -100 bans the token (ownllm.engine.sampler)
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class AdapterWeight:
    """One LoRA adapter applied to a request, scaled by `weight`."""

    adapter_id: str
    weight: float = 1.0


class TokenConstraint(Protocol):
    """Constrained decoding (JSON schema, grammar) as the engine sees it.

    The engine calls `fill_bitmask` before sampling each token of the request
    (int32 bitmask, shape [batch, ceil(vocab / 32)], bit set = allowed),
    then `accept_token` with the sampled token. `fork` gives an independent
    copy for each of n > 1 choices.
    """

    def fill_bitmask(self, bitmask: Any, row: int) -> None: ...

    def accept_token(self, token_id: int) -> bool: ...

    def is_terminated(self) -> bool: ...

    def fork(self) -> TokenConstraint: ...


# Priority classes, lower first: the scheduler serves interactive rows before batch rows,
# which fill the rest of each step and are preempted when interactive work needs room.
PRIORITY_INTERACTIVE = 0
PRIORITY_BATCH = 1


@dataclass
class GenerateRequest:
    """One generation request. `cache_scope` isolates prefix-cache reuse
    (the tenant id): a cached prefix is only reused within the same scope.
    `priority` is its class (`PRIORITY_INTERACTIVE`, `PRIORITY_BATCH`).

    The embedded engine reads the token ids and `constraint`. A backend that forwards to
    another server may need the request as the client sent it: `model` (the id the client
    named), the chat `messages` or the completion `prompt_text` the ids were made from,
    and `response_format` (OpenAI's), which it passes on instead of a constraint."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    adapters: tuple[AdapterWeight, ...] = ()  # empty: the base model
    cache_scope: str = ""
    constraint: TokenConstraint | None = None
    priority: int = PRIORITY_INTERACTIVE
    model: str = ""  # the model id the client named (routing policy); empty: the base model
    messages: list[dict[str, str]] | None = None
    prompt_text: str | None = None
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str  # decoded text of this token alone (may be a partial UTF-8 piece)
    logprob: float
    bytes: tuple[int, ...] = ()
    top: tuple[tuple[int, str, float], ...] = ()  # (token_id, token, logprob) alternatives


@dataclass
class Delta:
    """What a backend yields while generating: new text for one choice.

    `text` is always whole UTF-8 characters and never contains (a prefix of)
    a stop string that may still complete. The last delta of a choice has
    `finish_reason` set: "stop", "length", "content_filter" or "abort".
    """

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0  # cumulative for this choice


@dataclass(frozen=True)
class ModelInfo:
    """The base model a backend serves."""

    id: str
    max_model_len: int
    vocab_size: int
    dtype: str
    architecture: str = "LlamaForCausalLM"
    weights_sha256: str = ""


@dataclass(frozen=True)
class EngineStats:
    """How busy a backend is now; a backend leaves at 0 what it does not count."""

    running: int = 0  # sequences in the running batch
    waiting: int = 0  # requests queued for admission
    waiting_seqs: int = 0  # their sequences (n per request)
    waiting_tokens: int = 0  # the worst-case tokens they may need
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    resident_adapters: int = 0  # adapter sets in LoRA slots
    tokens_generated: int = 0  # since the engine started
    busy_seconds: float = 0.0  # time spent stepping since the engine started


# -- the embedded engine's inbox: from any thread to the engine thread --------
@dataclass(frozen=True)
class AddRequest:
    """Start `request` (validated and charged to the queue already)."""

    request: GenerateRequest


@dataclass(frozen=True)
class AbortRequest:
    """Finish every choice of `request_id` with "abort" and free its KV blocks."""

    request_id: str


@dataclass(frozen=True)
class EvictAdapter:
    """Drop the resident slots holding `adapter_id` (replaced or unloaded); pinned
    slots go when their last sequence ends."""

    adapter_id: str


EngineCommand = AddRequest | AbortRequest | EvictAdapter
