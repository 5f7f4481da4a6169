"""Monthly budgets reserved in leases: requests admitted in memory, the counter exact again
once leases go back, and no interleaving of processes passes the budget (SQLite file and
PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from ownllm.errors import InsufficientQuotaError
from ownllm.gateway.budget import LEASE_IDLE_S, MIN_LEASED_BUDGET, lease_size
from ownllm.gateway.limits import Limiter
from ownllm.gateway.principal import Limits, Principal
from ownllm.store.db import Database
from tests.gateway.replicas import run_replicas

BUDGET = 10 * MIN_LEASED_BUDGET  # leased in slices of 1 %
LEASE = lease_size(BUDGET)


def principal(budget: int = BUDGET, key_id: str = "key-1") -> Principal:
    return Principal(tenant_id="acme", key_id=key_id, key_limits=Limits(monthly_tokens=budget))


async def test_requests_run_on_the_lease_and_the_counter_ends_exact(db_url):
    db = Database.open(db_url)
    now = [0.0]
    limiter = Limiter(db, clock=lambda: now[0])
    first = await limiter.admit(principal(), 1000)
    assert limiter.used_tokens("key:key-1") == 1000 + LEASE  # the request and one lease
    rest = await asyncio.gather(*(limiter.admit(principal(), 1000) for _ in range(50)))
    assert limiter.used_tokens("key:key-1") == 1000 + LEASE  # all 50 came from the lease
    for admission in (first, *rest):
        await limiter.finish(admission, 10)
    assert limiter.used_tokens("key:key-1") == 1000 + LEASE  # unused tokens refill the lease
    limiter.budgets.return_idle()
    assert limiter.used_tokens("key:key-1") == 1000 + LEASE  # used a moment ago: kept
    now[0] += LEASE_IDLE_S
    limiter.budgets.return_idle()
    assert limiter.used_tokens("key:key-1") == 51 * 10  # what the requests used
    db.close()


async def test_a_lone_replica_is_refused_only_when_the_budget_lacks_the_tokens(db_url):
    db = Database.open(db_url)
    limiter = Limiter(db)
    budget = MIN_LEASED_BUDGET
    admitted = []
    with pytest.raises(InsufficientQuotaError) as refused:
        for _ in range(11):
            admitted.append(await limiter.admit(principal(budget), budget // 10))
    assert len(admitted) == 10  # its own lease went toward the tenth
    assert refused.value.code == "insufficient_quota"
    assert limiter.used_tokens("key:key-1") == budget
    await limiter.finish(admitted[0], 0)
    limiter.close()  # at shutdown every lease goes back
    assert limiter.used_tokens("key:key-1") == budget - budget // 10
    db.close()


def _replica(db_url: str, start, results, n: int) -> None:
    """One gateway replica: its own process, pool and limiter, `n` requests at once."""
    db = Database.open(db_url, migrate=False)
    limiter = Limiter(db)

    async def one() -> int:
        try:
            await limiter.admit(principal(MIN_LEASED_BUDGET, key_id="key-r"), 50_000)
            return 1
        except InsufficientQuotaError:
            return 0

    async def run() -> int:
        return sum(await asyncio.gather(*(one() for _ in range(n))))

    start.wait()
    results.put(asyncio.run(run()))
    db.close()


def test_leases_never_let_two_processes_pass_the_budget(db_url):
    db = Database.open(db_url)
    admitted = sum(run_replicas(_replica, db_url, 15))
    # 1M tokens / 50k per request: at most 20; a lease (10k) held by each replica may turn
    # away the last one
    assert 19 <= admitted <= 20
    assert Limiter(db).used_tokens("key:key-r") <= MIN_LEASED_BUDGET
    db.close()
