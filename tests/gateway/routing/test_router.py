"""The Router over ScriptedBackend replicas: spreading, affinity, retry before the first
token, the error after it, the circuit, health, the hybrid policy. Driven by events (the
scripted cues, `check_now()`, a fake clock), never by timing."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
from ownllm.backends.scripted import ScriptedBackend, reply
from ownllm.config import HybridPolicy, RoutingConfig
from ownllm.errors import ModelNotFoundError, OverloadedError, ReplicaFailedError
from ownllm.gateway.routing import Replica, Router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_router(n_local=2, remotes=(), policies=(), **cfg):
    config = dataclasses.replace(RoutingConfig(policy=tuple(policies)), **cfg)
    replicas = [Replica(f"local-{i}", ScriptedBackend(reply("ok"))) for i in range(n_local)]
    replicas += [
        Replica(name, ScriptedBackend(reply("remote")), is_remote=True) for name in remotes
    ]
    clock = Clock()
    return Router(replicas, config, clock=clock), {r.name: r for r in replicas}, clock


def request(i=0, tenant="acme", prompt=None, adapters=(), model="", max_tokens=8):
    return GenerateRequest(
        request_id=f"req-{i}",
        prompt_token_ids=list(prompt if prompt is not None else range(100 + i, 148 + i)),
        sampling=SamplingParams(max_tokens=max_tokens),
        adapters=tuple(AdapterWeight(a) for a in adapters),
        cache_scope=tenant,
        model=model,
    )


async def run(router, req) -> str:
    return "".join([d.text async for d in router.generate(req)])


def served(replicas) -> dict[str, int]:
    return {name: len(r.backend.requests) for name, r in replicas.items()}


async def test_cold_requests_spread_over_the_replicas():
    router, replicas, _ = make_router(n_local=3)
    for i in range(6):
        assert await run(router, request(i)) == "ok"
    assert served(replicas) == {"local-0": 2, "local-1": 2, "local-2": 2}


async def test_a_shared_prefix_goes_back_to_its_replica_within_the_tenant_only():
    router, replicas, _ = make_router(n_local=3)
    system = list(range(64))  # four full blocks shared by every turn
    await run(router, request(0, prompt=system + [1, 2]))
    first = next(n for n, r in replicas.items() if r.backend.requests)
    for i in range(1, 4):
        await run(router, request(i, prompt=system + [i, i]))
    assert served(replicas)[first] == 4
    assert replicas[first].num_prefix_hits == 3
    await run(router, request(9, tenant="globex", prompt=system + [1, 2]))
    assert sum(r.num_prefix_hits for r in replicas.values()) == 3  # no cross-tenant hit


async def test_an_adapter_goes_back_where_it_is_resident():
    router, replicas, _ = make_router(n_local=3)
    for i in range(4):
        await run(router, request(i, adapters=["ad-1"]))
    counts = served(replicas)
    assert sorted(counts.values()) == [0, 0, 4]
    assert sum(r.num_adapter_hits for r in replicas.values()) == 3


async def test_round_robin_is_a_setting():
    router, replicas, _ = make_router(n_local=2, strategy="round_robin")
    for i in range(4):
        await run(router, request(i, adapters=["ad-1"]))
    assert served(replicas) == {"local-0": 2, "local-1": 2}


async def test_a_failure_before_the_first_token_is_retried_on_another_replica():
    router, replicas, _ = make_router(n_local=2, strategy="round_robin")
    replicas["local-0"].backend.fail_after = 0  # its connection breaks at once
    for i in range(4):
        assert await run(router, request(i)) == "ok"
    bad = replicas["local-0"]
    assert bad.num_retried == len(bad.backend.requests) >= 1  # each failure went elsewhere
    assert len(replicas["local-1"].backend.requests) == 4


async def test_k_failures_open_the_circuit_and_a_probe_after_cooldown_closes_it():
    router, replicas, clock = make_router(n_local=2, failure_threshold=2, cooldown_s=30,
                                          strategy="round_robin")  # fmt: skip
    bad = replicas["local-0"]
    bad.backend.fail_after = 0
    for i in range(4):
        assert await run(router, request(i)) == "ok"
    assert bad.state == "circuit_open" and len(bad.backend.requests) == 2  # then skipped
    states = {s["name"]: s["state"] for s in router.replica_states()}
    assert states == {"local-0": "circuit_open", "local-1": "healthy"}
    bad.backend.fail_after = None  # it recovers
    clock.now += 31
    for i in range(4, 8):
        await run(router, request(i))
    assert bad.state == "healthy" and len(bad.backend.requests) > 2


async def test_a_break_after_the_first_token_is_an_error_not_a_truncation():
    router, replicas, _ = make_router(n_local=2)
    for r in replicas.values():
        r.backend.fail_after = 1
    got = []
    with pytest.raises(ReplicaFailedError, match="after the answer began") as e:
        async for delta in router.generate(request(0)):
            got.append(delta.text)
    assert got == ["o"] and e.value.status_code == 502
    assert sum(len(r.backend.requests) for r in replicas.values()) == 1  # never replayed


async def test_every_replica_failing_is_a_503_naming_them():
    router, replicas, _ = make_router(n_local=2, max_attempts=3)
    for r in replicas.values():
        r.backend.fail_after = 0
    with pytest.raises(OverloadedError, match="local-0.*local-1|local-1.*local-0") as e:
        await run(router, request(0))
    assert e.value.status_code == 503 and e.value.code == "no_healthy_replica"


async def test_the_requests_own_error_is_not_retried():
    router, replicas, _ = make_router(n_local=2)
    for r in replicas.values():
        r.backend.error = ModelNotFoundError("The model 'x' does not exist")
    with pytest.raises(ModelNotFoundError):
        await run(router, request(0))
    assert all(r.num_retried == 0 and r.state == "healthy" for r in replicas.values())


async def test_health_checks_take_a_replica_down_and_back_with_empty_caches():
    router, replicas, _ = make_router(n_local=2)
    await run(router, request(0, adapters=["ad-1"]))
    home = next(r for r in replicas.values() if r.backend.requests)
    home.backend.is_healthy = False
    await router.check_now()
    assert home.state == "down"
    for i in range(1, 4):
        await run(router, request(i, adapters=["ad-1"]))
    assert len(home.backend.requests) == 1  # nothing more went there
    home.backend.is_healthy = True
    await router.check_now()
    assert home.state == "healthy" and ("ad-1",) not in home.view.adapters
    assert await router.health()


async def test_unloading_an_adapter_reaches_every_replica_and_the_index():
    router, replicas, _ = make_router(n_local=2)
    unloaded = []
    for r in replicas.values():
        r.backend.unload_adapter = lambda a, name=r.name: _record(unloaded, (name, a))
    await run(router, request(0, adapters=["ad-1"]))
    await router.unload_adapter("ad-1")
    assert sorted(unloaded) == [("local-0", "ad-1"), ("local-1", "ad-1")]
    assert all(("ad-1",) not in r.view.adapters for r in replicas.values())


async def _record(into, item):
    into.append(item)


async def test_abort_reaches_the_replica_running_the_request():
    router, replicas, _ = make_router(n_local=2)
    stream = router.generate(request(0, max_tokens=50))
    await stream.__anext__()
    await router.abort("req-0")
    home = next(r for r in replicas.values() if r.backend.requests)
    assert home.backend.aborted == ["req-0"]
    await stream.aclose()
    assert not home.backend.running


# -- the hybrid route ----------------------------------------------------------------------


async def test_local_only_never_leaves_even_with_every_local_replica_down():
    router, replicas, _ = make_router(n_local=2, remotes=["paid"])
    for name in ("local-0", "local-1"):
        replicas[name].backend.is_healthy = False
    await router.check_now()
    with pytest.raises(OverloadedError, match="no healthy replica"):
        await run(router, request(0))
    assert replicas["paid"].backend.requests == []


async def test_fallback_goes_remote_only_when_no_local_replica_is_healthy():
    policy = HybridPolicy(tenant="acme", mode="fallback", remote="paid")
    router, replicas, _ = make_router(n_local=1, remotes=["paid"], policies=[policy])
    assert await run(router, request(0)) == "ok"
    replicas["local-0"].backend.is_healthy = False
    await router.check_now()
    assert await run(router, request(1)) == "remote"
    with pytest.raises(OverloadedError):  # another tenant: no policy, local only
        await run(router, request(2, tenant="globex"))
    assert len(replicas["paid"].backend.requests) == 1


async def test_overflow_goes_remote_past_the_queue_threshold_for_its_tenant_only():
    policy = HybridPolicy(tenant="acme", mode="overflow", remote="paid", queue_threshold=4)
    router, replicas, _ = make_router(n_local=1, remotes=["paid"], policies=[policy])
    local = replicas["local-0"]
    local.view.num_waiting = 3
    assert await run(router, request(0)) == "ok"
    local.view.num_waiting = 4  # scraped: the local queue reached the threshold
    assert await run(router, request(1)) == "remote"
    assert await run(router, request(2, tenant="globex")) == "ok"  # not allowed to leave
    assert len(replicas["paid"].backend.requests) == 1


async def test_route_serves_a_model_only_remotely_and_only_for_allowed_tenants():
    policy = HybridPolicy(tenant="acme", model="gpt-4o-mini", mode="route", remote="paid")
    router, replicas, _ = make_router(n_local=1, remotes=["paid"], policies=[policy])
    assert await run(router, request(0, model="gpt-4o-mini")) == "remote"
    with pytest.raises(ModelNotFoundError, match="gpt-4o-mini"):  # as if it did not exist
        await run(router, request(1, tenant="globex", model="gpt-4o-mini"))
    assert len(replicas["paid"].backend.requests) == 1
    assert router.policies.routed_models() == {"gpt-4o-mini": "paid"}


async def test_a_retry_never_falls_through_to_a_remote_the_policy_does_not_allow():
    router, replicas, _ = make_router(n_local=2, remotes=["paid"], max_attempts=5)
    for name in ("local-0", "local-1"):
        replicas[name].backend.fail_after = 0
    with pytest.raises(OverloadedError):
        await run(router, request(0))
    assert replicas["paid"].backend.requests == []


def test_only_a_policy_that_may_send_a_request_off_the_premises_says_so():
    """What the input guard waits for: a tenant's request that may go to a remote replica
    is guarded before it is sent; one that stays local is guarded while it starts."""
    policies = [
        HybridPolicy(tenant="acme", mode="overflow", remote="paid"),
        HybridPolicy(tenant="initech", model="gpt-4o-mini", mode="route", remote="paid"),
    ]
    router, _, _ = make_router(n_local=1, remotes=["paid"], policies=policies)
    assert router.may_leave_premises("acme", "tiny")
    assert router.may_leave_premises("initech", "gpt-4o-mini")
    assert not router.may_leave_premises("initech", "tiny")  # local_only, the default
    assert not router.may_leave_premises("globex", "gpt-4o-mini")


def test_a_policy_naming_no_remote_backend_is_a_config_error():
    from ownllm.config import ConfigError

    with pytest.raises(ConfigError, match="remote = true"):
        make_router(n_local=1, policies=[HybridPolicy(mode="fallback", remote="nowhere")])


async def test_running_on_names_the_replica_of_a_running_request_only():
    router, replicas, _ = make_router(n_local=2)
    stream = router.generate(request(7))
    await anext(stream)  # running now
    where = router.running_on("req-7")
    assert where in replicas and replicas[where].backend.requests
    async for _ in stream:
        pass
    assert router.running_on("req-7") is None
    assert router.running_on("req-unknown") is None


async def test_a_prompt_counts_in_its_replicas_prefill_backlog_until_its_first_token():
    router, replicas, _ = make_router(n_local=2)
    prompt = list(range(64))  # four full blocks
    first = router.route(request(0, prompt=prompt))
    assert first.view.num_prefill_tokens == 64  # nothing of it thought cached
    # the same prompt again: `first` holds its prefix, but is busy prefilling it
    second = router.route(request(1, prompt=prompt))
    assert second is not first and second.view.num_prefill_tokens == 64
    router.started("req-0")
    assert first.view.num_prefill_tokens == 0
    third = router.route(request(2, prompt=prompt))
    assert third is first and first.view.num_prefill_tokens == 0  # all of it cached there
    router.started("req-1")
    router.started("req-2")
    assert [r.view.num_prefill_tokens for r in replicas.values()] == [0, 0]


async def test_the_prefill_backlog_empties_after_answers_and_failures():
    router, replicas, _ = make_router(n_local=2, strategy="round_robin")
    replicas["local-0"].backend.fail_after = 0  # fails before its first token: retried
    for i in range(4):
        assert await run(router, request(i)) == "ok"
    assert replicas["local-0"].num_retried >= 1
    assert [r.view.num_prefill_tokens for r in replicas.values()] == [0, 0]


async def test_an_answer_is_an_open_conversation_until_its_next_turn_arrives():
    router, replicas, clock = make_router(n_local=2, conversation_think_s=3.0)
    prompt = list(range(64))
    assert await run(router, request(0, prompt=prompt)) == "ok"
    (home,) = [r for r in replicas.values() if r.backend.requests]
    assert home.view.open_conversations == 0.0  # no conversation seen to continue yet
    clock.now += 3.0
    # the next turn: the whole conversation so far and a new message; it is answered, and
    # the conversation now counts by the share seen to continue (1 of 1, smoothed: 1/2)
    turn_2 = prompt + list(range(500, 532))
    assert await run(router, request(1, prompt=turn_2)) == "ok"
    assert home.view.open_conversations == pytest.approx(1 / 2)
    clock.now += 3.0  # one think time later, not back yet: it weighs e^-1 as much
    router.route(request(9, prompt=list(range(900, 964))))  # another conversation's turn
    router.started("req-9")
    assert home.view.open_conversations == pytest.approx(math.exp(-1) / 2)
    assert await run(router, request(2, prompt=turn_2 + list(range(600, 616)))) == "ok"
    assert home.view.open_conversations == pytest.approx(2 / 3)  # closed; opened again


async def test_no_open_conversations_are_counted_with_conversations_off():
    router, replicas, clock = make_router(n_local=2, conversations=False)
    prompt = list(range(64))
    assert await run(router, request(0, prompt=prompt)) == "ok"
    clock.now += 1.0
    assert await run(router, request(1, prompt=prompt + list(range(500, 532)))) == "ok"
    assert [r.view.open_conversations for r in replicas.values()] == [0, 0]


async def test_own_prefill_keeps_a_conversation_on_the_replica_holding_its_prompt():
    conversation = list(range(640))  # 20 blocks of 32 tokens
    for own, stays in ((0.0, False), (1.0, True)):
        router, replicas, _ = make_router(n_local=2, own_prefill=own, prefix_block_tokens=32)
        holder = router.route(request(0, prompt=conversation))
        router.started("req-0")
        holder.view.num_prefill_tokens = 400  # another prompt is prefilling there
        # the next turn: 672 tokens to prefill elsewhere, 32 + the 400 ahead on the holder
        nxt = router.route(request(1, prompt=conversation + list(range(1000, 1032))))
        assert (nxt is holder) is stays, own
        assert nxt.num_prefix_hits == (1 if stays else 0)


async def test_adapter_wait_load_keeps_an_adapter_on_its_replica_a_little_past_the_load_bound():
    for slack, stays in ((4.0, True), (0.0, False)):
        router, replicas, _ = make_router(n_local=3, adapter_wait_load=slack)
        holder = router.route(request(0, adapters=("ad-1",)))
        for r in replicas.values():
            r.view.num_in_flight = 6 if r is holder else 1  # mean 2.67: bound 5.33 < 6
        nxt = router.route(request(1, adapters=("ad-1",)))
        assert (nxt is holder) is stays, slack


async def test_the_adapters_wait_shrinks_with_the_healthy_replicas_serving_the_model():
    # 16 replicas: the wait is 300 x 8 / 16 = 150 tokens; the holder is 200 behind the least.
    for every_size, stays in ((0, True), (8, False)):
        router, replicas, _ = make_router(n_local=16, adapter_wait_replicas=every_size)
        holder = router.route(request(0, adapters=("ad-1",)))
        router.started("req-0")
        holder.view.num_prefill_tokens = 200
        nxt = router.route(request(1, adapters=("ad-1",)))
        assert (nxt is holder) is stays, every_size
    # Half of them down: 8 candidates, the full 300, and the adapter stays on its replica.
    router, replicas, _ = make_router(n_local=16)
    holder = router.route(request(0, adapters=("ad-1",)))
    router.started("req-0")
    holder.view.num_prefill_tokens = 200
    down = [r for r in replicas.values() if r is not holder][:8]
    for r in down:
        r.backend.is_healthy = False
    await router.check_now()
    nxt = router.route(request(1, adapters=("ad-1",)))
    assert nxt is holder and nxt.num_adapter_hits == 1
