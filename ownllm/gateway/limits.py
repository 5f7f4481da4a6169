"""Limits per key and per tenant: requests and tokens per minute, concurrent
requests, and a monthly token budget. Over a limit: `RateLimitError` (429,
`rate_limit_exceeded`) or `InsufficientQuotaError` (429, `insufficient_quota`),
both with a Retry-After.

How each limit holds:
- rpm, tpm, concurrent: in memory, a 60-second sliding window (exact: any
  60 s holds at most `rpm` admitted requests) behind one lock, so they are
  exact under concurrency in one process. They are **per replica**: with N
  gateway replicas a key may reach N × its rpm; set limits / N or route a
  key's traffic to one replica.
- monthly tokens: **shared** through the database (`ownllm.gateway.budget`):
  admission reserves the request's worst case (prompt + n × max_tokens) with
  conditional UPDATEs, so no interleaving of replicas can admit more than the
  budget; large budgets are reserved in leases, so most requests are admitted
  in memory. When the request ends the reservation is settled to the tokens
  actually used.

Admission has two stages, so that a request over its key's rate costs no more than a
lookup, however large its prompt:
1. `admit_request`, before the prompt is read: concurrency and rpm. The request
   holds its slot, and counts toward rpm, from here on, whatever happens next
   (a 400, a later 429): the gateway works on it.
2. `admit_tokens`, once the prompt is tokenised: tpm and the monthly budget for
   the worst case. tpm is corrected to the real count at the end.
A request refused at a stage consumes nothing of that stage's limits. Left out:
per-day limits, per-model limits, a shared (Redis) per-minute window.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from ownllm.errors import RateLimitError
from ownllm.gateway.budget import LEASE_IDLE_S, MonthlyBudgets, budgets_of
from ownllm.gateway.principal import Limits, Principal

WINDOW_S = 60.0


class _TokenEntry:
    """Tokens one request counts in a window; settled to the real count at its end."""

    __slots__ = ("at", "tokens", "in_window")

    def __init__(self, at: float, tokens: int) -> None:
        self.at, self.tokens, self.in_window = at, tokens, True


@dataclass
class _Window:
    """Admitted requests of one scope in the last minute, and its live requests."""

    requests: deque = field(default_factory=deque)  # admission times
    tokens: deque = field(default_factory=deque)  # _TokenEntry, oldest first
    num_tokens: int = 0
    num_active: int = 0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0].at <= horizon:
            entry = self.tokens.popleft()
            entry.in_window = False
            self.num_tokens -= entry.tokens


@dataclass
class Admission:
    """What one admitted request holds; give it back with `Limiter.finish`."""

    principal: Principal
    reserved_tokens: int
    scopes: list[tuple[str, Limits]] = field(default_factory=list)  # with a window each
    windows: list[_Window] = field(default_factory=list)
    token_entries: list[_TokenEntry] = field(default_factory=list)
    budget_scopes: list[str] = field(default_factory=list)
    period: str = ""
    is_finished: bool = False


def _scopes(principal: Principal) -> list[tuple[str, Limits]]:
    out = []
    if principal.key_id is not None and not principal.key_limits.is_unlimited:
        out.append((f"key:{principal.key_id}", principal.key_limits))
    if not principal.tenant_limits.is_unlimited:
        out.append((f"tenant:{principal.tenant_id}", principal.tenant_limits))
    return out


class Limiter:
    """One per app (the Gateway's); `db` is needed for monthly budgets, `defer_write` (the
    usage ledger's `record`) queues what settling gives back to the database."""

    def __init__(
        self,
        db: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        defer_write: Callable[[Callable[[Any], None]], None] | None = None,
    ) -> None:
        self.db = db
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self.budgets = MonthlyBudgets(
            db, clock=clock, wall_clock=wall_clock, defer_write=defer_write
        )

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        """Both stages at once, for a caller that knows the tokens up front; a refusal at
        the second gives the slot back at once."""
        admission = self.admit_request(principal)
        try:
            await self.admit_tokens(admission, estimated_tokens)
        except BaseException:
            self._release_local(admission, actual_tokens=0)
            raise
        return admission

    async def admit_tokens(self, admission: Admission, tokens: int) -> None:
        """Stage 2: tpm and the monthly budgets for up to `tokens`, or a 429. A refusal
        takes no tokens; the slot stays held until `finish`."""
        self.admit_tokens_local(admission, tokens)
        if budgets_of(admission.principal):
            try:
                if not self.budgets.take_leased(admission):
                    await run_in_threadpool(self.budgets.reserve, admission)
            except BaseException:
                self._settle_local(admission, actual_tokens=0)
                raise

    async def finish(self, admission: Admission, actual_tokens: int) -> None:
        """Release the request's concurrency slot and settle its tokens (idempotent).

        With `budgets.defer_write` set (the usage ledger's writer), what goes back to the
        database is queued for the ledger's next batch instead of written on the request's
        path: it only gives back unused reservation, so a late write never lets a budget be
        exceeded.
        """
        if admission.is_finished:
            return
        self._release_local(admission, actual_tokens)
        if not admission.budget_scopes:
            return
        if self.budgets.defer_write is not None:
            went_idle = self.budgets.settle(admission, actual_tokens)
        else:
            went_idle = await run_in_threadpool(self.budgets.settle, admission, actual_tokens)
        if went_idle:  # give the lease back unless a request uses it again meanwhile
            asyncio.get_running_loop().call_later(LEASE_IDLE_S + 0.05, self._return_idle)

    def _return_idle(self) -> None:
        if self.budgets.defer_write is not None:
            self.budgets.return_idle()
        else:
            asyncio.get_running_loop().run_in_executor(None, self.budgets.return_idle)

    def reserve_budget(self, admission: Admission) -> None:
        """Reserve `admission.reserved_tokens` against every monthly budget in the
        database, all or none (blocking)."""
        self.budgets.reserve(admission)

    def used_tokens(self, scope: str, period: str | None = None) -> int:
        """Tokens the counter of `key:<id>` / `tenant:<id>` holds this month (or `period`)."""
        return self.budgets.used_tokens(scope, period)

    def close(self) -> None:
        """At shutdown: every lease back to the database (queued with the ledger, if set)."""
        self.budgets.return_idle(force=True)

    # -- per replica: rpm, tpm, concurrency ------------------------------------------

    def admit_request(self, principal: Principal) -> Admission:
        """Stage 1, before the prompt is read: a concurrency slot and an rpm count, or a
        429. Give the slot back with `finish`, whatever happens after."""
        admission = Admission(principal, reserved_tokens=0, scopes=_scopes(principal))
        if not admission.scopes:
            return admission
        with self._lock:
            now = self._clock()
            windows = [self._window(name, now) for name, _ in admission.scopes]
            for (name, limits), window in zip(admission.scopes, windows):
                _check_requests(name, limits, window, now)
            for window in windows:
                window.requests.append(now)
                window.num_active += 1
            admission.windows = windows
        return admission

    def admit_tokens_local(self, admission: Admission, tokens: int) -> None:
        """The tpm part of stage 2 (memory only)."""
        admission.reserved_tokens = max(0, int(tokens))
        if not admission.windows:
            return
        with self._lock:
            now = self._clock()
            for (name, limits), window in zip(admission.scopes, admission.windows):
                window.prune(now)
                _check_tokens(name, limits, window, admission.reserved_tokens, now)
            for window in admission.windows:
                entry = _TokenEntry(now, admission.reserved_tokens)
                window.tokens.append(entry)
                window.num_tokens += admission.reserved_tokens
                admission.token_entries.append(entry)

    def admit_local(self, principal: Principal, tokens: int) -> Admission:
        """Both per-replica stages at once (any thread)."""
        admission = self.admit_request(principal)
        try:
            self.admit_tokens_local(admission, tokens)
        except BaseException:
            self._release_local(admission, actual_tokens=0)
            raise
        return admission

    def _window(self, name: str, now: float) -> _Window:
        window = self._windows.get(name)
        if window is None:
            window = self._windows[name] = _Window()
        window.prune(now)
        return window

    def _settle_local(self, admission: Admission, actual_tokens: int) -> None:
        """Correct the tokens the request counts in each window to `actual_tokens`."""
        with self._lock:
            actual = max(0, int(actual_tokens))
            for window, entry in zip(admission.windows, admission.token_entries):
                if entry.in_window:
                    window.num_tokens += actual - entry.tokens
                entry.tokens = actual

    def _release_local(self, admission: Admission, actual_tokens: int) -> None:
        """Give the concurrency slot back and settle the tokens (once)."""
        with self._lock:
            if admission.is_finished:
                return
            admission.is_finished = True
            for window in admission.windows:
                window.num_active -= 1
        self._settle_local(admission, actual_tokens)


def _check_requests(name: str, limits: Limits, window: _Window, now: float) -> None:
    who = name.replace(":", " ", 1)
    if limits.max_concurrent is not None and window.num_active >= limits.max_concurrent:
        raise RateLimitError(
            f"Too many concurrent requests for {who}: limit {limits.max_concurrent}. "
            "Retry when one finishes.",
            retry_after=1,
        )
    if limits.rpm is not None and len(window.requests) >= limits.rpm:
        wait = window.requests[0] + WINDOW_S - now
        raise RateLimitError(
            f"Rate limit reached for requests per minute on {who}: limit {limits.rpm}, "
            f"used {len(window.requests)}. Please try again in {wait:.1f}s.",
            retry_after=max(1.0, wait),
        )


def _check_tokens(name: str, limits: Limits, window: _Window, tokens: int, now: float) -> None:
    if limits.tpm is None or window.num_tokens + tokens <= limits.tpm:
        return
    who = name.replace(":", " ", 1)
    if tokens > limits.tpm:
        raise RateLimitError(
            f"Request too large for tokens per minute on {who}: it may use {tokens} "
            f"tokens (prompt + max_tokens), the limit is {limits.tpm}. "
            "Lower max_tokens or shorten the prompt.",
            retry_after=WINDOW_S,
        )
    need, wait = window.num_tokens + tokens - limits.tpm, 1.0
    for entry in window.tokens:
        need -= entry.tokens
        wait = entry.at + WINDOW_S - now
        if need <= 0:
            break
    raise RateLimitError(
        f"Rate limit reached for tokens per minute on {who}: limit {limits.tpm}, "
        f"used {window.num_tokens}, requested {tokens}. "
        f"Please try again in {wait:.1f}s.",
        retry_after=max(1.0, wait),
    )
