"""Limits: rpm / tpm / concurrency exact under concurrency; monthly budgets shared
through the database across limiters, processes and replicas."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from ownllm.errors import InsufficientQuotaError, RateLimitError
from ownllm.gateway.budget import month_of, seconds_to_next_month
from ownllm.gateway.limits import Limiter
from ownllm.gateway.principal import Limits, Principal
from ownllm.store.db import Database
from tests.gateway.replicas import run_replicas


def key_principal(limits: Limits, tenant_limits: Limits = Limits(), key_id: str = "key-1"):
    return Principal(
        tenant_id="acme", key_id=key_id, key_limits=limits, tenant_limits=tenant_limits
    )


async def _admit_all(limiter: Limiter, principal: Principal, n: int, tokens: int = 1):
    async def one():
        try:
            return await limiter.admit(principal, tokens)
        except RateLimitError as e:
            return e

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_fifty_parallel_against_rpm_ten_admits_exactly_ten():
    limiter = Limiter()
    results = await _admit_all(limiter, key_principal(Limits(rpm=10)), 50)
    refused = [r for r in results if isinstance(r, RateLimitError)]
    assert len(results) - len(refused) == 10
    assert all(e.status_code == 429 and e.code == "rate_limit_exceeded" for e in refused)
    assert all(1 <= e.retry_after <= 60 for e in refused)


def test_rpm_exact_from_many_threads():
    limiter = Limiter()
    principal = key_principal(Limits(rpm=10))
    admitted, barrier = [], threading.Barrier(50)

    def worker():
        barrier.wait()
        with contextlib.suppress(RateLimitError):
            admitted.append(limiter.admit_local(principal, 1))

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 10


async def test_rpm_window_slides_and_tenant_limit_spans_keys():
    now = [0.0]
    limiter = Limiter(clock=lambda: now[0])
    tenant = Limits(rpm=3)
    first, second = (
        key_principal(Limits(), tenant, "key-1"),
        key_principal(Limits(), tenant, "key-2"),
    )
    for principal in (first, second, first):
        await limiter.admit(principal, 1)
    with pytest.raises(RateLimitError, match="tenant acme") as refused:
        await limiter.admit(second, 1)
    assert refused.value.retry_after == pytest.approx(60)
    now[0] = 60.5
    await limiter.admit(second, 1)


async def test_concurrency_limit_releases_on_finish():
    limiter = Limiter()
    principal = key_principal(Limits(max_concurrent=2))
    held = [await limiter.admit(principal, 1) for _ in range(2)]
    with pytest.raises(RateLimitError, match="concurrent"):
        await limiter.admit(principal, 1)
    await limiter.finish(held[0], 1)
    await limiter.finish(held[0], 1)  # idempotent: does not free a second slot
    await limiter.admit(principal, 1)
    with pytest.raises(RateLimitError):
        await limiter.admit(principal, 1)


async def test_tpm_reserves_worst_case_then_settles_to_actual():
    limiter = Limiter()
    principal = key_principal(Limits(tpm=100))
    admission = await limiter.admit(principal, 80)  # prompt + max_tokens
    with pytest.raises(RateLimitError, match="tokens per minute"):
        await limiter.admit(principal, 30)
    await limiter.finish(admission, 20)  # it used 20
    await limiter.admit(principal, 80)
    with pytest.raises(RateLimitError, match="Request too large"):
        await limiter.admit(principal, 101)


async def test_the_request_stage_holds_a_slot_and_an_rpm_count_until_finish():
    """Stage 1 (before the prompt is read) takes the slot and counts toward rpm; a refusal
    at stage 2 (tokens) takes no tokens and keeps both until `finish`, which runs once."""
    limiter = Limiter()
    principal = key_principal(Limits(rpm=2, max_concurrent=1, tpm=100))
    admission = limiter.admit_request(principal)
    assert admission.reserved_tokens == 0 and admission.token_entries == []
    with pytest.raises(RateLimitError, match="concurrent"):
        limiter.admit_request(principal)
    with pytest.raises(RateLimitError, match="Request too large"):
        await limiter.admit_tokens(admission, 101)
    with pytest.raises(RateLimitError, match="concurrent"):
        limiter.admit_request(principal)  # still held: the request is not finished
    await limiter.finish(admission, 0)
    await limiter.finish(admission, 0)  # idempotent
    second = limiter.admit_request(principal)
    await limiter.admit_tokens(second, 100)  # the refused request took none of the 100
    await limiter.finish(second, 100)
    with pytest.raises(RateLimitError, match="requests per minute"):
        limiter.admit_request(principal)  # both requests counted


async def test_unlimited_principal_takes_the_fast_path():
    limiter = Limiter()
    admission = await limiter.admit(Principal(tenant_id="acme", key_id="k"), 10**9)
    assert admission.windows == [] and admission.budget_scopes == []


async def test_monthly_budget_reserves_and_settles(db_url):
    db = Database.open(db_url)
    limiter = Limiter(db, wall_clock=lambda: 1_764_000_000.0)  # 2025-11
    principal = key_principal(Limits(monthly_tokens=100), Limits(monthly_tokens=1000))
    admission = await limiter.admit(principal, 60)
    assert limiter.used_tokens("key:key-1") == 60
    with pytest.raises(InsufficientQuotaError) as refused:
        await limiter.admit(principal, 60)
    assert refused.value.code == "insufficient_quota" and refused.value.status_code == 429
    assert refused.value.retry_after == seconds_to_next_month(1_764_000_000.0)
    assert limiter.used_tokens("tenant:acme") == 60  # the refused one was rolled back
    await limiter.finish(admission, 25)
    assert limiter.used_tokens("key:key-1") == 25
    await limiter.admit(principal, 60)
    assert month_of(1_764_000_000.0) == "2025-11"
    db.close()


def _replica(db_url: str, start, results, n: int) -> None:
    """One gateway replica: its own process, database pool and limiter."""
    db = Database.open(db_url, migrate=False)
    limiter = Limiter(db)
    principal = key_principal(Limits(), Limits(monthly_tokens=1000), key_id="key-r")
    admitted = []

    def worker():
        try:
            limiter.reserve_budget(limiter.admit_local(principal, 100))
            admitted.append(1)
        except InsufficientQuotaError:
            pass

    start.wait()
    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(len(admitted))
    db.close()


def test_monthly_budget_holds_across_two_processes(db_url):
    db = Database.open(db_url)
    counts = run_replicas(_replica, db_url, 15)
    assert sum(counts) == 10  # 1000-token budget / 100 tokens each, 30 tries in all
    assert Limiter(db).used_tokens("tenant:acme") == 1000
    db.close()
