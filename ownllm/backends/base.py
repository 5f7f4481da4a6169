"""The Backend protocol: what the API and gateway ask of any inference engine.

The embedded torch engine is the first implementation; a vLLM backend and a
remote OpenAI-compatible backend implement the same protocol. Everything that
crosses this boundary is a plain typed dataclass, so the API layer never sees
torch and a backend never sees HTTP.

Left out on purpose: chat rendering. The caller renders the chat template
with `Backend.tokenizer` and passes token ids, so every backend sees the same
prompt the trainer saw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from ownllm.engine.messages import (
    PRIORITY_BATCH,
    PRIORITY_INTERACTIVE,
    AdapterWeight,
    Delta,
    EngineStats,
    GenerateRequest,
    ModelInfo,
    SamplingParams,
    TokenConstraint,
    TokenLogprob,
)

__all__ = [
    "PRIORITY_BATCH",
    "PRIORITY_INTERACTIVE",
    "AdapterWeight",
    "Backend",
    "Delta",
    "EngineStats",
    "GenerateRequest",
    "ModelInfo",
    "SamplingParams",
    "TokenConstraint",
    "TokenLogprob",
]


@runtime_checkable
class Backend(Protocol):
    """An inference engine the gateway can route to."""

    @property
    def model_info(self) -> ModelInfo: ...

    @property
    def tokenizer(self) -> Any: ...

    # True: `generate` honours `GenerateRequest.constraint` (built by the caller from the
    # local tokenizer); False: it passes `response_format` on to the server it calls.
    uses_token_constraints: bool

    def may_leave_premises(self, tenant_id: str, model: str) -> bool:
        """Whether a request of `tenant_id` for `model` may be sent to a `remote = true`
        backend. If not, the input guard runs while the request starts (a block aborts it
        before anything reaches the client); if so, the guard finishes before it is sent."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Yield deltas until every choice of the request has finished.

        Raises `ContextLengthExceededError` before doing any work when the
        prompt plus max_tokens exceeds the model's context, `OverloadedError`
        when the queue is full, `ModelNotFoundError` for an unknown adapter.
        Closing the iterator early (client gone) aborts the request.
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    async def load_adapter(self, adapter_id: str, path: str) -> None: ...

    async def unload_adapter(self, adapter_id: str) -> None: ...

    async def health(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...
