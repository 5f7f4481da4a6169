from ownllm.gateway.routing.prefix import AdapterIndex, PrefixIndex, prefix_hashes


def test_prefix_hashes_chain_full_blocks_only():
    ids = list(range(40))
    hashes = prefix_hashes("acme", ids, block_tokens=16)
    assert len(hashes) == 2  # the partial third block is not hashed
    assert prefix_hashes("acme", ids[:32] + [999] * 8, 16) == hashes
    changed = prefix_hashes("acme", [7] + ids[1:], 16)
    assert changed[0] != hashes[0] and changed[1] != hashes[1]  # a chain: block 1 depends on 0


def test_prefix_hashes_are_scoped_to_the_tenant():
    ids = list(range(64))
    assert set(prefix_hashes("acme", ids)).isdisjoint(prefix_hashes("globex", ids))


def test_prefix_index_matches_the_longest_leading_run_and_forgets_lru():
    index = PrefixIndex(capacity=4)
    a = prefix_hashes("t", list(range(48)), 16)  # 3 blocks
    index.add(a)
    assert index.num_matched(a) == 3
    assert index.num_matched(prefix_hashes("t", list(range(32)) + [5] * 16, 16)) == 2
    index.add(prefix_hashes("t", [9] * 32, 16))  # 2 more blocks: a's oldest block goes
    assert len(index) == 4
    assert index.num_matched(a) == 0  # a's first block was evicted: nothing leads


def test_adapter_index_is_an_lru_of_adapter_sets():
    index = AdapterIndex(capacity=2)
    index.add(("a",))
    index.add(("b",))
    index.add(())  # the base model takes no slot
    index.add(("a",))  # a is now the most recent
    index.add(("c",))
    assert ("a",) in index and ("c",) in index and ("b",) not in index
    index.discard_adapter("a")
    assert ("a",) not in index
