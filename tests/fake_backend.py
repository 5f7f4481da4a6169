"""A fast, deterministic stand-in for the engine: emits `num_tokens` tokens ("tok0 tok1 …")
one delta each, optionally sleeping `token_delay_s` between them, or aborting after
`abort_after` tokens (as the engine does at shutdown).

Used where the edge being tested is the gateway, not the model: HTTP ledger tests and
bench/gateway_overhead.py (which calls it directly and through the API in the same run).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ownllm.backends.base import Delta, GenerateRequest, ModelInfo


class FakeBackend:
    def __init__(
        self,
        tokenizer: Any = None,
        *,
        model_id: str = "fake",
        token_delay_s: float = 0.0,
        abort_after: int | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self.model_id = model_id
        self.token_delay_s = token_delay_s
        self.abort_after = abort_after
        self.aborted: set[str] = set()
        self.num_generated = 0

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, max_model_len=4096, vocab_size=32000, dtype="float32")

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        sampling = request.sampling
        num_prompt = len(request.prompt_token_ids)
        for index in range(sampling.n):
            for i in range(sampling.max_tokens):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                else:
                    await asyncio.sleep(0)
                self.num_generated += 1
                if self.abort_after is not None and i >= self.abort_after:
                    yield Delta(
                        index,
                        "",
                        finish_reason="abort",
                        num_prompt_tokens=num_prompt,
                        num_output_tokens=i,
                    )
                    return
                last = i == sampling.max_tokens - 1
                yield Delta(
                    index=index,
                    text=f"tok{i} ",
                    token_ids=[100 + i],
                    finish_reason="length" if last else None,
                    num_prompt_tokens=num_prompt,
                    num_output_tokens=i + 1,
                )

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    async def load_adapter(self, adapter_id: str, path: str) -> None: ...

    async def unload_adapter(self, adapter_id: str) -> None: ...

    async def health(self) -> bool:
        return True

    def stats(self) -> dict[str, float]:
        return {"running": 0, "waiting": 0, "tokens_generated": self.num_generated}

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...
