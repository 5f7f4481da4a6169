from ownllm.gateway.routing.prefix import AdapterIndex, PrefixIndex, prefix_hashes
from ownllm.gateway.routing.scoring import ReplicaView, Weights, choose

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
