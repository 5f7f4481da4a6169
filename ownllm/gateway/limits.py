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
- monthly tokens: **shared** through the database. Admission reserves the
  request's worst case (prompt + n × max_tokens) with one conditional
  `UPDATE quota_counters SET used = used + n WHERE used + n <= limit`; on
  PostgreSQL a concurrent UPDATE of the same row waits and re-checks the
  condition, on SQLite the write lock serialises them, so no interleaving of
  replicas can admit more than the budget. When the request ends the
  reservation is settled to the tokens actually used.

tpm counts the same worst case at admission and is corrected to the real
count at the end. Refused requests consume nothing. Left out: per-day
limits, per-model limits, a shared (Redis) per-minute window.
"""

from __future__ import annotations

import calendar
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool

from ownllm.errors import InsufficientQuotaError, RateLimitError
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
    windows: list[_Window] = field(default_factory=list)
    token_entries: list[_TokenEntry] = field(default_factory=list)
    budget_scopes: list[str] = field(default_factory=list)
    period: str = ""
    is_finished: bool = False


def month_of(wall: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(wall))


def seconds_to_next_month(wall: float) -> float:
    now = datetime.fromtimestamp(wall, tz=timezone.utc)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    return max(1.0, start - wall)


def _scopes(principal: Principal) -> list[tuple[str, Limits]]:
    out = []
    if principal.key_id is not None and not principal.key_limits.is_unlimited:
        out.append((f"key:{principal.key_id}", principal.key_limits))
    if not principal.tenant_limits.is_unlimited:
        out.append((f"tenant:{principal.tenant_id}", principal.tenant_limits))
    return out


class Limiter:
    """One per app (AppState.extras["limiter"]); `db` is needed for monthly budgets."""

    def __init__(
        self,
        db: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._known_counters: set[tuple[str, str]] = set()  # counter rows that exist
        self.defer_write: Callable[[Callable[[Any], None]], None] | None = None

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        """Admit one request that may use up to `estimated_tokens`, or raise a 429 error."""
        admission = self.admit_local(principal, estimated_tokens)
        if any(limits.monthly_tokens for _, limits in _scopes(principal)):
            try:
                await run_in_threadpool(self.reserve_budget, admission)
            except BaseException:
                self._release_local(admission, actual_tokens=0, drop_request=True)
                raise
        return admission

    async def finish(self, admission: Admission, actual_tokens: int) -> None:
        """Release the request's concurrency slot and settle its tokens (idempotent).

        With `defer_write` set (the usage ledger's writer), the settlement is queued and
        written with the next ledger batch instead of on the request's path: it only gives
        back unused reservation, so a late write never lets a budget be exceeded.
        """
        if admission.is_finished:
            return
        self._release_local(admission, actual_tokens)
        delta = max(0, int(actual_tokens)) - admission.reserved_tokens
        if not admission.budget_scopes or delta == 0:
            return
        settle = functools.partial(_settle, admission.budget_scopes, admission.period, delta)
        if self.defer_write is not None:
            self.defer_write(settle)
        else:
            await run_in_threadpool(self._write, settle)

    # -- per replica: rpm, tpm, concurrency ------------------------------------------

    def admit_local(self, principal: Principal, tokens: int) -> Admission:
        admission = Admission(principal, reserved_tokens=max(0, int(tokens)))
        scopes = _scopes(principal)
        if not scopes:
            return admission
        with self._lock:
            now = self._clock()
            windows = [(name, limits, self._window(name, now)) for name, limits in scopes]
            for name, limits, window in windows:
                self._check(name, limits, window, admission.reserved_tokens, now)
            for _, _, window in windows:
                window.requests.append(now)
                entry = _TokenEntry(now, admission.reserved_tokens)
                window.tokens.append(entry)
                window.num_tokens += admission.reserved_tokens
                window.num_active += 1
                admission.windows.append(window)
                admission.token_entries.append(entry)
        return admission

    def _window(self, name: str, now: float) -> _Window:
        window = self._windows.get(name)
        if window is None:
            window = self._windows[name] = _Window()
        window.prune(now)
        return window

    @staticmethod
    def _check(name: str, limits: Limits, window: _Window, tokens: int, now: float) -> None:
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
        if limits.tpm is not None and window.num_tokens + tokens > limits.tpm:
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

    def _release_local(
        self, admission: Admission, actual_tokens: int, drop_request: bool = False
    ) -> None:
        with self._lock:
            if admission.is_finished:
                return
            actual = max(0, int(actual_tokens))
            for window, entry in zip(admission.windows, admission.token_entries):
                window.num_active -= 1
                if entry.in_window:
                    window.num_tokens += actual - entry.tokens
                entry.tokens = actual
                if drop_request:
                    _remove_last(window.requests, entry.at)
            admission.is_finished = True

    # -- shared: monthly budget -------------------------------------------------------

    def reserve_budget(self, admission: Admission) -> None:
        """Reserve `admission.reserved_tokens` against every monthly budget, all or none."""
        from ownllm.store.schema import QuotaCounter

        wall = self._wall()
        period = month_of(wall)
        budgets = [(n, lim.monthly_tokens) for n, lim in _scopes(admission.principal)]
        budgets = [(n, b) for n, b in budgets if b]
        tokens = admission.reserved_tokens
        # A bare connection, not an ORM Session: this runs on every budgeted request, and
        # a Session costs ~10x the two statements themselves.
        with self.db.engine.begin() as session:
            for scope, budget in budgets:
                if (scope, period) not in self._known_counters:
                    insert_missing(
                        self.db, session, QuotaCounter, scope=scope, period=period, used_tokens=0
                    )
                result = session.execute(
                    _counter_updates()[0], {"s": scope, "p": period, "n": tokens, "limit": budget}
                )
                if result.rowcount != 1:
                    who = scope.replace(":", " ", 1)
                    raise InsufficientQuotaError(
                        f"You exceeded the monthly token budget of {who} ({budget} tokens); "
                        f"this request may use {tokens}. It resets at the start of next "
                        "month (UTC), or an admin raises it.",
                        retry_after=seconds_to_next_month(wall),
                    )
        self._known_counters.update((scope, period) for scope, _ in budgets)
        admission.budget_scopes = [scope for scope, _ in budgets]
        admission.period = period

    def _write(self, fn: Callable[[Any], None]) -> None:
        with self.db.engine.begin() as connection:
            fn(connection)

    def used_tokens(self, scope: str, period: str | None = None) -> int:
        """Tokens charged this month (or `period`) to `key:<id>` / `tenant:<id>`."""
        from ownllm.store.schema import QuotaCounter

        with self.db.session() as session:
            row = session.get(QuotaCounter, (scope, period or month_of(self._wall())))
            return row.used_tokens if row else 0


@functools.cache
def _counter_updates() -> tuple[Any, Any]:
    """The two statements of the budget path, built once (bound parameters, cached SQL)."""
    from sqlalchemy import bindparam, update

    from ownllm.store.schema import QuotaCounter as Q

    mine = (Q.scope == bindparam("s"), Q.period == bindparam("p"))
    used = Q.used_tokens + bindparam("n")
    reserve = update(Q).where(*mine, used <= bindparam("limit")).values(used_tokens=used)
    settle = update(Q).where(*mine).values(used_tokens=used)
    return reserve, settle


def _settle(scopes: list[str], period: str, delta: int, session: Any) -> None:
    """Correct reserved tokens to the tokens used (delta is usually negative)."""
    for scope in scopes:
        session.execute(_counter_updates()[1], {"s": scope, "p": period, "n": delta})


def _remove_last(times: deque, value: float) -> None:
    """Drop one admission time (a request refused later does not count toward rpm)."""
    for i in range(len(times) - 1, -1, -1):
        if times[i] == value:
            del times[i]
            return


def insert_missing(db: Any, session: Any, model: Any, **values: Any) -> None:
    """INSERT the row unless its primary key exists (ON CONFLICT DO NOTHING; both dialects).
    `session` is an ORM Session or a Connection."""
    if db.is_postgres:
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())


def limiter_for(state: Any) -> Limiter:
    """The app's Limiter, created on first use."""
    limiter = state.extras.get("limiter")
    if limiter is None:
        limiter = state.extras["limiter"] = Limiter(state.db)
    return limiter
