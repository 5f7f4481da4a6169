"""The Gateway: every gateway part of one app, built once by the app factory, in order.

`Gateway.build(config, db, backend)` makes each part with what it needs passed to its
constructor: the `Authenticator`, the `UsageLedger`, the `Limiter` (whose budget
give-backs ride the ledger's batches), the `MeteringHook` over both, the `Guard` and its
hook, and the `CaptureHook` (only with a database). `hooks` is their order on the
inference path: metering first (a key over its limits is refused before anything reads its
text), then the guard, capture last (it stores what the guard let through).

The stage methods (`admit_request` … `finish`) are the path's gateway stages
(`ownllm.gateway.hooks` says when each runs); each calls, in order, the hooks that take
part in it, picked once here. Routes get the Gateway as a FastAPI dependency
(`get_gateway`); it knows nothing of the api layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ownllm.config import Config
from ownllm.gateway.auth import Authenticator
from ownllm.gateway.capture import CaptureHook
from ownllm.gateway.guard.checks import Guard
from ownllm.gateway.guard.hooks import GuardHook, load_guard
from ownllm.gateway.hooks import InferenceCall, InferenceHook, InferenceOutcome
from ownllm.gateway.limits import Limiter
from ownllm.gateway.metering import BusyTracker, MeteringHook, RemotePrices
from ownllm.gateway.principal import is_loopback
from ownllm.gateway.usage import UsageLedger
from ownllm.store.db import Database

log = logging.getLogger("ownllm.gateway")

STAGES = ("admit_request", "admit_tokens", "check_input", "check_output", "flush_output", "finish")


@dataclass(frozen=True)
class Gateway:
    auth: Authenticator
    limiter: Limiter
    ledger: UsageLedger
    metering: MeteringHook
    guard: Guard
    hooks: tuple[InferenceHook, ...]  # in the order each stage calls them
    _stages: dict[str, tuple[Callable[..., Any], ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        stages = {
            stage: tuple(getattr(hook, stage) for hook in self.hooks if hook.takes(stage))
            for stage in STAGES
        }
        object.__setattr__(self, "_stages", stages)  # derived once; the Gateway is frozen

    @classmethod
    def build(cls, config: Config, db: Database | None, backend: Callable[[], Any]) -> Gateway:
        """The gateway of one app; `backend()` is its backend once started (None before),
        read for the engine's busy time. Raises PolicyError when the guard cannot load."""
        auth = Authenticator(
            db,
            admin_key=config.auth.admin_key,
            loopback=is_loopback(config.server.host),
            cache_seconds=config.auth.key_cache_seconds,
        )
        ledger = UsageLedger(db)
        limiter = Limiter(db, defer_write=ledger.record)  # give-backs ride the ledger
        prices = RemotePrices(backend, config.cost.price_table)
        metering = MeteringHook(limiter, ledger, BusyTracker(backend), prices)
        guard = load_guard(config.guard)
        capture = (CaptureHook(db, guard, config.capture),) if db is not None else ()
        hooks = (metering, GuardHook(guard, db), *capture)  # limits, the guard, capture last
        return cls(auth, limiter, ledger, metering, guard, hooks)

    def close(self) -> None:
        """At shutdown: the last busy sample, budget leases and queued ledger rows written."""
        self.metering.close()

    # -- the stages of the inference path ---------------------------------------------------

    async def admit_request(self, call: InferenceCall) -> None:
        """Request limits (rpm, concurrency), before the text is read: a hook raises
        RateLimitError to refuse."""
        for hook in self._stages["admit_request"]:
            await hook(call)

    async def admit_tokens(self, call: InferenceCall) -> None:
        """Token limits (tpm, monthly budget) on the tokenised call: a hook raises
        RateLimitError or InsufficientQuotaError to refuse."""
        for hook in self._stages["admit_tokens"]:
            await hook(call)

    async def check_input(self, call: InferenceCall) -> bool:
        """Input guard: a hook raises ContentPolicyError or replaces call.messages / prompts /
        inputs. Returns True when the text was changed (the caller prepares the call again)."""
        before = (call.messages, call.prompts, call.inputs)
        for hook in self._stages["check_input"]:
            await hook(call)
        return (call.messages, call.prompts, call.inputs) != before

    @property
    def checks_output(self) -> bool:
        """Whether any hook looks at generated text (else deltas pass untouched)."""
        return bool(self._stages["check_output"] or self._stages["flush_output"])

    async def check_output(self, call: InferenceCall, index: int, text: str) -> str | None:
        """Output guard on each new piece of text: the text to send, or None to stop the
        choice with finish_reason content_filter."""
        for hook in self._stages["check_output"]:
            result = await hook(call, index, text)
            if result is None:
                return None
            text = result
        return text

    async def flush_output(self, call: InferenceCall, index: int) -> tuple[str, bool]:
        """End of a choice: the text output guards still hold back (a streaming check keeps
        the tail that could be the start of a match), and whether a guard cut the choice."""
        text, is_cut = "", False
        for hook in self._stages["flush_output"]:
            tail, cut = await hook(call, index)
            text, is_cut = text + tail, is_cut or cut
        return text, is_cut

    async def finish(self, call: InferenceCall, outcome: InferenceOutcome) -> None:
        """Usage ledger, guard events, capture: once per call, whatever happened. A failing
        hook is logged, never raised: it must not turn a served answer into an error."""
        for hook in self._stages["finish"]:
            try:
                await hook(call, outcome)
            except Exception:
                log.exception("inference finish hook %r failed", hook)


async def get_gateway(request: Request) -> Gateway:
    """FastAPI dependency: the app's Gateway (built by the app factory). Async: FastAPI
    would run a plain function in a worker thread."""
    return request.app.state.gateway
