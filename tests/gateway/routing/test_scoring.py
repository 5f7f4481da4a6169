from ownllm.gateway.routing.prefix import AdapterIndex, PrefixIndex, prefix_hashes
from ownllm.gateway.routing.scoring import ReplicaView, Weights, adapter_wait, choose

W = Weights()


def views(n: int) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", PrefixIndex(1000), AdapterIndex(4)) for i in range(n)]


def test_affinity_picks_the_replica_holding_the_prefix():
    vs = views(3)
    hashes = prefix_hashes("acme", list(range(64)))
    vs[2].prefixes.add(hashes)
    choice = choose(vs, (), hashes, strategy="affinity", weights=W, turn=0)
    assert choice.index == 2 and choice.num_prefix_blocks == 4


def test_affinity_picks_the_replica_with_the_adapter_resident():
    vs = views(3)
    vs[1].adapters.add(("ad-1",))
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 1 and choice.is_adapter_hit


def test_load_outweighs_affinity_past_the_queue_scale():
    vs = views(2)
    hashes = prefix_hashes("acme", list(range(64)))
    vs[0].prefixes.add(hashes)
    vs[0].num_waiting = 40  # far past queue_scale: its prefix is not worth the wait
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index == 1
    vs[0].num_waiting = 1
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index == 0


def test_kv_cache_use_counts_against_a_replica():
    vs = views(2)
    vs[0].kv_usage = 0.95
    assert choose(vs, (), [], strategy="affinity", weights=W, turn=0).index == 1


def test_equal_scores_rotate_so_a_cold_start_spreads():
    vs = views(4)
    picked = {choose(vs, (), [], strategy="affinity", weights=W, turn=t).index for t in range(4)}
    assert picked == {0, 1, 2, 3}


def test_round_robin_ignores_affinity_and_least_loaded_takes_the_emptiest():
    vs = views(3)
    vs[0].adapters.add(("a",))
    assert [choose(vs, ("a",), [], strategy="round_robin", weights=W, turn=t).index
            for t in range(3)] == [0, 1, 2]  # fmt: skip
    vs[0].num_running, vs[1].num_in_flight, vs[2].num_waiting = 5, 2, 3
    assert choose(vs, ("a",), [], strategy="least_loaded", weights=W, turn=0).index == 1


def test_load_is_the_larger_of_scraped_and_in_flight():
    v = views(1)[0]
    v.num_waiting, v.num_running, v.num_in_flight = 2, 3, 4
    assert v.load == 5
    v.num_in_flight = 9  # requests sent since the last scrape
    assert v.load == 9


def test_a_replica_past_the_load_bound_is_passed_over_despite_its_prefix():
    vs = views(4)
    hashes = prefix_hashes("acme", list(range(64)))
    vs[0].prefixes.add(hashes)
    vs[0].num_in_flight = 10
    for v in vs[1:]:
        v.num_in_flight = 2
    # mean 4: bound 1.25 × 4 + 2 = 7 < 10; the score alone would keep the prefix's replica
    unbounded = Weights(load_slack=1e9)
    assert choose(vs, (), hashes, strategy="affinity", weights=unbounded, turn=0).index == 0
    choice = choose(vs, (), hashes, strategy="affinity", weights=W, turn=0)
    assert choice.index != 0 and choice.num_prefix_blocks == 0
    vs[0].num_in_flight = 7  # mean 3.25: bound 6.06, still past it
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index != 0
    vs[0].num_in_flight = 6  # mean 3: bound 5.75
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index != 0
    vs[0].num_in_flight = 5  # mean 2.75: bound 5.44, within it: affinity wins again
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index == 0


def test_factor_one_and_no_slack_is_least_loaded_with_affinity_breaking_ties():
    vs = views(3)
    vs[0].num_in_flight, vs[1].num_in_flight, vs[2].num_in_flight = 3, 1, 1
    vs[0].adapters.add(("a",))
    vs[2].adapters.add(("a",))
    tight = Weights(load_factor=1.0, load_slack=0.0)
    choice = choose(vs, ("a",), [], strategy="affinity", weights=tight, turn=0)
    assert choice.index == 2 and choice.is_adapter_hit  # r0 holds it too, but is busier


def test_a_hot_adapter_is_spread_within_the_bound():
    def busiest(weights: Weights) -> int:
        vs = views(4)
        hashes = prefix_hashes("acme", list(range(64)))
        for turn in range(40):  # one hot adapter and prompt, none finishing
            c = choose(vs, ("hot",), hashes, strategy="affinity", weights=weights, turn=turn)
            vs[c.index].adapters.add(("hot",))
            vs[c.index].prefixes.add(hashes)
            vs[c.index].num_in_flight += 1
            mean = sum(v.load for v in vs) / 4
            bound = weights.load_factor * mean + weights.load_slack + weights.adapter_wait_load
            assert max(v.load for v in vs) <= bound + 1
        return max(v.load for v in vs)

    assert busiest(W) <= 18  # 1.25 × 10 + 2 + adapter_wait_load 4 (the mean is 10)
    assert busiest(Weights(adapter_wait_load=0)) <= 14  # 1.25 × 10 + 2
    assert busiest(Weights(load_slack=1e9)) > 18  # the score alone lets it pile up


def test_a_replica_prefilling_a_long_prompt_is_passed_over_until_it_starts():
    vs = views(3)
    hashes = prefix_hashes("acme", list(range(64)))
    vs[0].prefixes.add(hashes)
    vs[0].num_prefill_tokens = 800  # a new arrival would wait out that prefill's step
    choice = choose(vs, (), hashes, strategy="affinity", weights=W, turn=0)
    assert choice.index != 0 and choice.num_prefix_blocks == 0
    vs[0].num_prefill_tokens = W.prefill_slack  # within the slack: its prefix wins again
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index == 0


def test_the_prefill_bound_is_relative_to_the_least_prefilling_replica():
    vs = views(2)
    hashes = prefix_hashes("acme", list(range(64)))
    vs[0].prefixes.add(hashes)
    vs[0].num_prefill_tokens, vs[1].num_prefill_tokens = 900, 880  # both busy alike
    assert choose(vs, (), hashes, strategy="affinity", weights=W, turn=0).index == 0


def test_a_short_wait_on_the_adapters_replica_beats_loading_it_elsewhere():
    vs = views(3)
    vs[1].adapters.add(("ad-1",))
    vs[1].num_prefill_tokens = 300  # past prefill_slack (50), within adapter_wait_tokens (300)
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 1 and choice.is_adapter_hit
    vs[1].num_prefill_tokens = 301  # past both: the adapter is loaded on an idle replica
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index != 1 and not choice.is_adapter_hit


def test_in_a_fleet_past_adapter_wait_replicas_the_adapters_wait_shrinks_as_one_over_n():
    vs = views(16)  # twice adapter_wait_replicas (8): the wait is 300 x 8 / 16 = 150
    vs[5].adapters.add(("ad-1",))
    vs[5].num_prefill_tokens = 150
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 5 and choice.is_adapter_hit
    vs[5].num_prefill_tokens = 151  # past the shrunk wait: loaded on an idle replica
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index != 5 and not choice.is_adapter_hit
    every_size = Weights(adapter_wait_replicas=0)  # the full 300 at any fleet size
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=every_size, turn=0)
    assert choice.index == 5 and choice.is_adapter_hit
    # A replica down leaves 15 candidates: 300 x 8 / 15 = 160, and 151 is within it again.
    choice = choose(vs[:15], ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 5 and choice.is_adapter_hit
    assert adapter_wait(W, 4) == adapter_wait(W, 8) == 300 and adapter_wait(W, 64) == 37.5


def test_the_adapters_replica_may_run_a_few_more_requests_than_the_load_bound():
    vs = views(4)
    vs[0].adapters.add(("ad-1",))
    for v in vs[1:]:
        v.num_in_flight = 2
    vs[0].num_in_flight = 9  # mean 3.75: bound 6.69 < 9 <= 6.69 + adapter_wait_load (4)
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 0 and choice.is_adapter_hit
    no_slack = Weights(adapter_wait_load=0)  # the plain load bound: loaded elsewhere
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=no_slack, turn=0)
    assert choice.index != 0 and not choice.is_adapter_hit
    # Within the bounds the score still weighs the load; without its penalty only they decide:
    bounds_only = Weights(queue=0)
    vs[0].num_in_flight = 11  # mean 4.25: bound 7.31 + 4 = 11.31, still within
    assert choose(vs, ("ad-1",), [], strategy="affinity", weights=bounds_only, turn=0).index == 0
    vs[0].num_in_flight = 12  # mean 4.5: 7.63 + 4 = 11.63 < 12: past even that
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=bounds_only, turn=0)
    assert choice.index != 0 and not choice.is_adapter_hit
    vs[0].num_in_flight, vs[0].num_prefill_tokens = 9, 301  # within the load, past the wait
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index != 0 and not choice.is_adapter_hit


def test_a_request_that_must_load_its_adapter_goes_where_fewest_conversations_are_open():
    vs = views(3)
    vs[0].adapters.add(("ad-1",))
    vs[0].num_prefill_tokens = 400  # past adapter_wait_tokens (300): the adapter moves
    vs[1].open_conversations = 3  # their next turns would find its prefill in the way
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=1)
    assert choice.index == 2 and not choice.is_adapter_hit
    vs[1].open_conversations = 0  # none open anywhere: the score and rotation decide
    assert choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=1).index == 1


def test_each_conversation_a_move_puts_at_risk_buys_more_wait_on_the_adapters_replica():
    vs = views(3)
    vs[0].adapters.add(("ad-1",))
    vs[0].num_prefill_tokens = 400
    vs[1].open_conversations = vs[2].open_conversations = 1  # 300 x (1 + 1) = 600
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 0 and choice.is_adapter_hit
    vs[0].num_prefill_tokens = 601  # past even that: loaded on the quieter of the others
    vs[2].open_conversations = 2
    choice = choose(vs, ("ad-1",), [], strategy="affinity", weights=W, turn=0)
    assert choice.index == 1 and not choice.is_adapter_hit


def test_own_prefill_counts_the_prompt_a_replica_lacks_so_a_conversation_stays_with_its_cache():
    vs = views(2)
    hashes = prefix_hashes("acme", list(range(640)))  # 40 blocks
    vs[0].adapters.add(("ad-1",))
    vs[0].prefixes.add(hashes[:36])  # the conversation so far: 576 of its 640 tokens
    vs[0].num_prefill_tokens = 400  # another prompt ahead of it, past adapter_wait_tokens
    choice = choose(vs, ("ad-1",), hashes, strategy="affinity", weights=W, turn=0)
    assert choice.index == 1 and not choice.is_adapter_hit  # the default compares 400 with 0
    own = Weights(own_prefill=1.0)  # 400 + 4 x 16 = 464 ahead of its first token there, 640 on r1
    choice = choose(vs, ("ad-1",), hashes, strategy="affinity", weights=own, turn=0)
    assert choice.index == 0 and choice.is_adapter_hit and choice.num_prefix_blocks == 36
    vs[0].num_prefill_tokens = 900  # 964 against 640: beyond even the adapter's wait
    choice = choose(vs, ("ad-1",), hashes, strategy="affinity", weights=own, turn=0)
    assert choice.index == 1
