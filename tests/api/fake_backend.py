"""A scripted Backend and embedding model for API tests: deterministic output, no torch,
observable aborts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

from ownllm.backends.base import Delta, GenerateRequest, ModelInfo, TokenLogprob

WORDS = ["Hello", " there", ",", " friend", "!", " How", " are", " you", "?"]


class FakeBackend:
    """Choice i of a request yields WORDS (prefixed "i:" for i > 0), one per token.

    `delay` sleeps before every token (to keep a request running); `error` is raised
    before any work, as the real backend raises ContextLengthExceeded/Overloaded.
    `gate`, when set, holds every token after a request's first until one `gate.release()`
    (from any thread): a test sees what a client shows mid-stream, whatever the speed.
    """

    def __init__(self, max_model_len: int = 256, vocab_size: int = 512) -> None:
        self.model_info = ModelInfo("tiny", max_model_len, vocab_size, "float32")
        self.tokenizer = None
        self.delay = 0.0
        self.error: Exception | None = None
        self.requests: list[GenerateRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.gate: threading.Semaphore | None = None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self.error is not None:
            raise self.error
        self.requests.append(request)
        self.running.add(request.request_id)
        sp = request.sampling
        finished = 0
        try:
            for step in range(sp.max_tokens):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.gate is not None and step > 0:
                    await _wait_for(self.gate)
                for i in range(sp.n):
                    word = WORDS[step % len(WORDS)]
                    text = (f"{i}:" if i and step == 0 else "") + word
                    last = step == sp.max_tokens - 1
                    hit_stop = any(s in text for s in sp.stop)
                    reason = "stop" if hit_stop else "length" if last else None
                    if hit_stop:
                        text = text.split(next(s for s in sp.stop if s in text))[0]
                    logprobs = None
                    if sp.logprobs is not None:
                        top = tuple((7, f"alt{j}", -1.0 - j) for j in range(sp.logprobs))
                        logprobs = [TokenLogprob(step, word, -0.5, tuple(word.encode()), top)]
                    yield Delta(
                        index=i,
                        text=text,
                        token_ids=[step],
                        logprobs=logprobs,
                        finish_reason=reason,
                        num_prompt_tokens=len(request.prompt_token_ids),
                        num_output_tokens=step + 1,
                    )
                    finished += reason is not None
                if finished == sp.n or any(s in WORDS[step % len(WORDS)] for s in sp.stop):
                    return
        finally:
            self.running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def load_adapter(self, adapter_id: str, path: str) -> None: ...

    async def unload_adapter(self, adapter_id: str) -> None: ...

    async def health(self) -> bool:
        return True

    def stats(self) -> dict[str, float]:
        return {"running": len(self.running), "waiting": 0, "resident_adapters": 0}

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


async def _wait_for(gate: threading.Semaphore, timeout_s: float = 120.0) -> None:
    """Take one permit without blocking the event loop; the timeout only bounds a hang."""
    deadline = time.monotonic() + timeout_s
    while not gate.acquire(blocking=False):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the next token")
        await asyncio.sleep(0.01)


class StubEmbeddingModel:
    """Stands in for all-MiniLM-L6-v2: a token a word plus two special tokens, vectors
    [len(text), 0.5, -1.0]. `embedded` records the texts it was given; with `gate` set,
    `embed` signals `entered` and waits for the gate (to hold a request in flight)."""

    dimensions = 3
    max_length = 8

    def __init__(self) -> None:
        self.embedded: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(range(len(t.split()) + 2)) for t in texts]

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=120):
            raise TimeoutError("the test never opened the gate")
        self.embedded += texts
        return [[float(len(t)), 0.5, -1.0] for t in texts]
