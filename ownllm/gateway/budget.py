"""Monthly token budgets, shared by every gateway replica through the database.

A budget is one `quota_counters` row per scope (`key:<id>`, `tenant:<id>`) and month (UTC,
`2026-11`) whose `used_tokens` moves only by conditional UPDATEs:

    UPDATE quota_counters SET used_tokens = used_tokens + n
    WHERE scope = … AND period = … AND used_tokens + n <= budget

On PostgreSQL a concurrent UPDATE of the row waits and re-checks the condition; on SQLite
the write lock serialises them. So however replicas interleave, the counter never passes
the budget, and a request runs only on tokens the counter holds for it: its worst case
(prompt + n × max_tokens), settled to what it used when it ends. Requests refused consume
nothing.

Leases. A database write on every request puts a thread hop and a transaction on the
request's path (at 50 concurrent streams that cost tens of ms at p99) and, across
replicas, makes every request of a tenant wait on one hot row. So for budgets of at least
`MIN_LEASED_BUDGET` tokens a replica reserves 1/`LEASE_SHARE` of the budget beyond what a
request needs — its lease — and admits the next requests from it in memory. A finished
request gives its unused tokens back to the lease; a lease this replica has not used for
`LEASE_IDLE_S` goes back to the database (with the usage ledger's next batch), and so does
every lease at shutdown. What leasing costs: the counter runs ahead of real use by at most
one lease per replica serving the scope; near the end of a budget a request may be
refused while another replica still holds its lease (at most 1/LEASE_SHARE of the budget
each); a replica that crashes loses its lease for the rest of the month, as it loses its
in-flight reservations. A replica short of tokens first puts its own lease toward the
request, so a replica alone is refused only when the budget truly lacks the tokens.
Smaller budgets are reserved request by request. Left out: budgets per model or per day.
"""

from __future__ import annotations

import calendar
import functools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ownllm.errors import InsufficientQuotaError

LEASE_SHARE = 100  # a lease is 1/100 of the budget
MIN_LEASED_BUDGET = 1_000_000  # smaller budgets are reserved per request
LEASE_IDLE_S = 10.0  # a lease unused this long goes back (for other replicas near the end)


def month_of(wall: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(wall))


def seconds_to_next_month(wall: float) -> float:
    now = datetime.fromtimestamp(wall, tz=timezone.utc)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    return max(1.0, start - wall)


def lease_size(budget: int) -> int:
    """Tokens a replica reserves ahead of its requests for this budget (0: per request)."""
    return budget // LEASE_SHARE if budget >= MIN_LEASED_BUDGET else 0


def budgets_of(principal: Any) -> list[tuple[str, int]]:
    """(scope, monthly tokens) of the principal's key and tenant, where set."""
    out = []
    if principal.key_id is not None and principal.key_limits.monthly_tokens:
        out.append((f"key:{principal.key_id}", principal.key_limits.monthly_tokens))
    if principal.tenant_limits.monthly_tokens:
        out.append((f"tenant:{principal.tenant_id}", principal.tenant_limits.monthly_tokens))
    return out


class _Lease:
    """Tokens of one (scope, month) this replica reserved in the database ahead of need."""

    __slots__ = ("tokens", "num_active", "last_used", "is_refilling")

    def __init__(self) -> None:
        self.tokens = 0  # reserved in the counter, held by no request
        self.num_active = 0  # this replica's requests running on this budget
        self.last_used = 0.0
        self.is_refilling = False  # one top-up at a time: a burst must not lease 50 slices


class MonthlyBudgets:
    """One per Limiter. `take_leased` runs on the event loop (memory only); `reserve`,
    `settle` without `defer_write`, and `return_idle` without it block on the database."""

    def __init__(
        self,
        db: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        defer_write: Callable[[Callable[[Any], None]], None] | None = None,
    ) -> None:
        self.db = db
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._known_counters: set[tuple[str, str]] = set()  # counter rows that exist
        # the usage ledger's `record`, when given: give-backs ride its next batch
        self.defer_write = defer_write

    def take_leased(self, admission: Any) -> bool:
        """Admit from this replica's leases without I/O; False when one lacks the tokens."""
        budgets = budgets_of(admission.principal)
        period = month_of(self._wall())
        tokens = admission.reserved_tokens
        with self._lock:
            leases = [self._leases.get((scope, period)) for scope, _ in budgets]
            if any(lease is None or lease.tokens < tokens for lease in leases):
                return False
            now = self._clock()
            for lease in leases:
                lease.tokens -= tokens
                lease.num_active += 1
                lease.last_used = now
        admission.budget_scopes = [scope for scope, _ in budgets]
        admission.period = period
        return True

    def reserve(self, admission: Any) -> None:
        """Reserve the request's tokens in the database, on every budget or none, topping up
        the leases of large budgets; raises InsufficientQuotaError."""
        from ownllm.store.schema import QuotaCounter

        wall = self._wall()
        period = month_of(wall)
        budgets = budgets_of(admission.principal)
        tokens = admission.reserved_tokens
        taken, refilling = self._take_partial(budgets, period, tokens)
        refills: dict[str, int] = {}
        try:
            # a bare connection, not an ORM Session: a Session costs ~10x the statements
            with self.db.write() as connection:
                for scope, budget in budgets:
                    if (scope, period) not in self._known_counters:
                        insert_missing(
                            self.db,
                            connection,
                            QuotaCounter,
                            scope=scope,
                            period=period,
                            used_tokens=0,
                        )
                    need, size = tokens - taken.get(scope, 0), lease_size(budget)
                    if scope in refilling and _add(connection, scope, period, need + size, budget):
                        refills[scope] = size
                    elif not _add(connection, scope, period, need, budget):
                        who = scope.replace(":", " ", 1)
                        raise InsufficientQuotaError(
                            f"You exceeded the monthly token budget of {who} ({budget} "
                            f"tokens); this request may use {tokens}. It resets at the start "
                            "of next month (UTC), or an admin raises it.",
                            retry_after=seconds_to_next_month(wall),
                        )
        except BaseException:
            with self._lock:  # the transaction rolled back: the lease keeps what it lent
                for scope, n in taken.items():
                    self._leases.setdefault((scope, period), _Lease()).tokens += n
                for scope in refilling:
                    self._leases.setdefault((scope, period), _Lease()).is_refilling = False
            raise
        self._known_counters.update((scope, period) for scope, _ in budgets)
        now = self._clock()
        with self._lock:
            for scope, budget in budgets:
                if lease_size(budget):
                    lease = self._leases.setdefault((scope, period), _Lease())
                    lease.tokens += refills.get(scope, 0)
                    lease.is_refilling = lease.is_refilling and scope not in refilling
                    lease.num_active += 1
                    lease.last_used = now
        admission.budget_scopes = [scope for scope, _ in budgets]
        admission.period = period

    def _take_partial(
        self, budgets: list[tuple[str, int]], period: str, tokens: int
    ) -> tuple[dict[str, int], set[str]]:
        """Put what this replica's own leases hold toward a request (so a lone replica is
        refused only when the budget lacks the tokens), and claim the top-up of each lease
        no other request is topping up."""
        taken, refilling = {}, set()
        with self._lock:
            for scope, budget in budgets:
                if not lease_size(budget):
                    continue
                lease = self._leases.setdefault((scope, period), _Lease())
                if lease.tokens > 0:
                    taken[scope] = min(lease.tokens, tokens)
                    lease.tokens -= taken[scope]
                if not lease.is_refilling:
                    lease.is_refilling = True
                    refilling.add(scope)
        return taken, refilling

    def settle(self, admission: Any, actual_tokens: int) -> bool:
        """The request ended having used `actual_tokens`: the unused rest goes back to the
        lease, or to the database for a budget reserved per request. True when a lease
        has no request running any more (the caller schedules `return_idle`)."""
        unused = admission.reserved_tokens - max(0, int(actual_tokens))
        returns, went_idle = [], False
        with self._lock:
            for scope, budget in budgets_of(admission.principal):
                if scope not in admission.budget_scopes:
                    continue
                size, lease = lease_size(budget), self._leases.get((scope, admission.period))
                if not size or lease is None:  # per request, or the lease went at shutdown
                    returns.append((scope, unused))
                    continue
                lease.tokens += max(unused, 0)
                if unused < 0:  # more than reserved: charged to the counter
                    returns.append((scope, unused))
                if lease.tokens > 2 * size:  # more than it needs: give back the excess
                    returns.append((scope, lease.tokens - size))
                    lease.tokens = size
                lease.num_active -= 1
                lease.last_used = self._clock()
                went_idle = went_idle or lease.num_active == 0
        self._give_back([(s, n) for s, n in returns if n], admission.period)
        return went_idle

    def return_idle(self, force: bool = False) -> None:
        """Give back leases unused for `LEASE_IDLE_S` (every lease with `force`, at shutdown)."""
        now = self._clock()
        by_period: dict[str, list[tuple[str, int]]] = {}
        with self._lock:
            for (scope, period), lease in list(self._leases.items()):
                if not force and (lease.num_active or now - lease.last_used < LEASE_IDLE_S):
                    continue
                if lease.tokens:
                    by_period.setdefault(period, []).append((scope, lease.tokens))
                    lease.tokens = 0
                if not lease.num_active:
                    del self._leases[(scope, period)]
        for period, returns in by_period.items():
            self._give_back(returns, period)

    def _give_back(self, returns: list[tuple[str, int]], period: str) -> None:
        if not returns:
            return
        write = functools.partial(_subtract, returns, period)
        if self.defer_write is not None:
            self.defer_write(write)  # it only gives tokens back: writing late is safe
        else:
            with self.db.write() as connection:
                write(connection)

    def used_tokens(self, scope: str, period: str | None = None) -> int:
        """Tokens the counter holds this month (or `period`) for `key:<id>` / `tenant:<id>`:
        used, reserved by running requests and leased."""
        from ownllm.store.schema import QuotaCounter

        with self.db.session() as session:
            row = session.get(QuotaCounter, (scope, period or month_of(self._wall())))
            return row.used_tokens if row else 0


@functools.cache
def _statements() -> tuple[Any, Any]:
    """Reserve (conditional) and give back, built once (bound parameters, cached SQL)."""
    from sqlalchemy import bindparam, update

    from ownllm.store.schema import QuotaCounter as Q

    mine = (Q.scope == bindparam("s"), Q.period == bindparam("p"))
    used = Q.used_tokens + bindparam("n")
    reserve = update(Q).where(*mine, used <= bindparam("limit")).values(used_tokens=used)
    give_back = update(Q).where(*mine).values(used_tokens=Q.used_tokens - bindparam("n"))
    return reserve, give_back


def _add(connection: Any, scope: str, period: str, tokens: int, budget: int) -> bool:
    result = connection.execute(
        _statements()[0], {"s": scope, "p": period, "n": tokens, "limit": budget}
    )
    return result.rowcount == 1


def _subtract(returns: list[tuple[str, int]], period: str, connection: Any) -> None:
    for scope, tokens in returns:
        connection.execute(_statements()[1], {"s": scope, "p": period, "n": tokens})


def insert_missing(db: Any, session: Any, model: Any, **values: Any) -> None:
    """INSERT the row unless its primary key exists (ON CONFLICT DO NOTHING; both dialects).
    `session` is an ORM Session or a Connection."""
    if db.is_postgres:
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())
