"""ScriptedBackend: a Backend that says what it is told, for tests, benchmarks and demos.

No model and no torch. Every choice of a request reads the same `Script`, one token a
step: `GREETING` ("Hello there, friend! How are you?" over and over, the default),
`COUNTING` ("tok0 tok1 tok2 …") or `reply(text)` (a fixed answer, one character a token,
then finish "stop"). Choice i > 0 opens with "i:", so the choices of `n` differ. Stop
strings end a choice as the engine ends it; logprobs are scripted too.

Cues a caller sets, on construction or between requests:
- `delay_s`: sleep before every token (to keep a request running);
- `abort_after`: abort every choice after that many tokens, as the engine does at shutdown;
- `error`: raised before any work, as the engine raises ContextLengthExceededError or
  OverloadedError;
- `fail_after`: raise ConnectionError after that many tokens of each request, as a remote
  replica whose connection breaks mid-stream (0: before the first token);
- `is_healthy`: what `health()` answers (a replica a test takes down);
- `is_remote`: whether it stands for a `remote = true` backend (`may_leave_premises`);
- `respond`: a function of the request that picks its script (a model that answers what
  the prompt asks: a grader, an adapter that behaves unlike the base, a model that leaks);
- `gate`: a semaphore that holds every token after a request's first until one
  `gate.release()` (from any thread), so a test sees what a client shows mid-stream,
  whatever the speed of the machine.
It records the `requests` it was given, the ids it was asked to `abort`, and the ids
`running` now.

Left out: tokenising and adapters. The text of a step is the script's whatever the
prompt says, a step counts one token, and adapters load as a no-op.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ownllm.backends.base import (
    Delta,
    EngineStats,
    GenerateRequest,
    ModelInfo,
    TokenLogprob,
)

WORDS = ["Hello", " there", ",", " friend", "!", " How", " are", " you", "?"]
GATE_TIMEOUT_S = 120.0  # bounds a hang only: a gate the caller never releases


@dataclass(frozen=True)
class Script:
    """What every choice says: step s is `token(s)`, a (text, token id) pair. A script of
    `num_tokens` ends after them with finish "stop" (as a model that emits end-of-sequence);
    one without runs until max_tokens ("length")."""

    token: Callable[[int], tuple[str, int]]
    num_tokens: int | None = None


GREETING = Script(lambda step: (WORDS[step % len(WORDS)], step))
COUNTING = Script(lambda step: (f"tok{step} ", 100 + step))


def reply(text: str) -> Script:
    """A fixed answer, one character a token, then finish "stop"."""
    return Script(lambda step: (text[step], step), num_tokens=len(text))


def counting_backend(tokenizer: Any = None, **cues: Any) -> ScriptedBackend:
    """COUNTING on a 4,096-token context, for long answers (metering, load)."""
    return ScriptedBackend(
        COUNTING, tokenizer=tokenizer, model_id="fake", max_model_len=4096, vocab_size=32000, **cues
    )


class ScriptedBackend:
    """A `Backend` whose output is its script, with the cues the module docstring lists."""

    uses_token_constraints = True

    def __init__(
        self,
        script: Script = GREETING,
        *,
        tokenizer: Any = None,
        model_id: str = "tiny",
        max_model_len: int = 256,
        vocab_size: int = 512,
        delay_s: float = 0.0,
        abort_after: int | None = None,
    ) -> None:
        self.script = script
        self.model_info = ModelInfo(model_id, max_model_len, vocab_size, "float32")
        self.tokenizer = tokenizer
        self.delay_s = delay_s
        self.abort_after = abort_after
        self.error: Exception | None = None
        self.fail_after: int | None = None
        self.is_healthy = True
        self.is_remote = False
        self.respond: Callable[[GenerateRequest], Script] | None = None
        self.gate: threading.Semaphore | None = None
        self.requests: list[GenerateRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.num_generated = 0

    def may_leave_premises(self, tenant_id: str, model: str) -> bool:
        return self.is_remote

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self.error is not None:
            raise self.error
        self.requests.append(request)
        self.running.add(request.request_id)
        script = self.respond(request) if self.respond is not None else self.script
        num_steps = request.sampling.max_tokens
        if script.num_tokens is not None:
            num_steps = min(num_steps, script.num_tokens)
        unfinished = list(range(request.sampling.n))
        try:
            for step in range(num_steps):
                await asyncio.sleep(self.delay_s)  # 0 still yields to the event loop
                if self.fail_after is not None and step >= self.fail_after:
                    raise ConnectionError("scripted: the connection to the replica broke")
                if self.gate is not None and step > 0:
                    await _acquire(self.gate)
                if self.abort_after is not None and step >= self.abort_after:
                    for i in unfinished:
                        yield Delta(i, "", finish_reason="abort", num_output_tokens=step,
                                    num_prompt_tokens=len(request.prompt_token_ids))  # fmt: skip
                    return
                for delta in self._step(request, script, step, is_last=step == num_steps - 1,
                                        unfinished=unfinished):  # fmt: skip
                    yield delta
                if not unfinished:
                    return
        finally:
            self.running.discard(request.request_id)

    def _step(
        self,
        request: GenerateRequest,
        script: Script,
        step: int,
        *,
        is_last: bool,
        unfinished: list[int],
    ) -> list[Delta]:
        """The deltas of one step, one per unfinished choice; drops those that finish."""
        sp = request.sampling
        token, token_id = script.token(step)
        is_script_end = step + 1 == script.num_tokens
        deltas = []
        for i in list(unfinished):
            text = (f"{i}:" if i and step == 0 else "") + token
            stop = next((s for s in sp.stop if s in text), None)
            if stop is not None:
                text = text.split(stop)[0]
            is_stopped = stop is not None or is_script_end
            reason = "stop" if is_stopped else "length" if is_last else None
            deltas.append(
                Delta(
                    index=i,
                    text=text,
                    token_ids=[token_id],
                    logprobs=_logprobs(token, token_id, sp.logprobs),
                    finish_reason=reason,
                    num_prompt_tokens=len(request.prompt_token_ids),
                    num_output_tokens=step + 1,
                )
            )
            if reason is not None:
                unfinished.remove(i)
        self.num_generated += len(deltas)
        return deltas

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def load_adapter(self, adapter_id: str, path: str) -> None: ...

    async def unload_adapter(self, adapter_id: str) -> None: ...

    async def health(self) -> bool:
        return self.is_healthy

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.running), tokens_generated=self.num_generated)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


def _logprobs(token: str, token_id: int, num_top: int | None) -> list[TokenLogprob] | None:
    """-0.5 for the scripted token; alternatives "alt0", "alt1", … at -1, -2, …"""
    if num_top is None:
        return None
    top = tuple((7, f"alt{j}", -1.0 - j) for j in range(num_top))
    return [TokenLogprob(token_id, token, -0.5, tuple(token.encode()), top)]


async def _acquire(gate: threading.Semaphore) -> None:
    """Take one permit without blocking the event loop."""
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not gate.acquire(blocking=False):
        if time.monotonic() > deadline:
            raise TimeoutError("the gate was never released for the next token")
        await asyncio.sleep(0.01)
