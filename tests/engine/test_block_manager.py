"""KV blocks: allocation, prefix reuse scoped by tenant and adapters, eviction, fork."""

from __future__ import annotations

import sys

from ownllm.engine.block_manager import BlockManager
from ownllm.engine.sequence import Sequence


def seq(tokens, cache_key=b"tenant-a") -> Sequence:
    return Sequence("r", list(tokens), cache_key=cache_key)


def compute(bm: BlockManager, s: Sequence) -> None:
    """Allocate and 'compute' the whole of `s`, then publish its full blocks."""
    cached = bm.find_cached_blocks(s)
    num_new = s.num_tokens - len(cached) * bm.block_size
    bm.allocate(s, num_new, cached)
    s.num_computed_tokens = s.num_tokens
    bm.cache_full_blocks(s)


def test_block_manager_and_scheduler_import_no_torch():
    import subprocess

    code = (
        "import sys, ownllm.engine.scheduler, ownllm.engine.block_manager;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(range(10))
    assert bm.can_allocate(s, 10)
    bm.allocate(s, 10)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    assert not bm.can_allocate(seq(range(100, 130)), 30)
    bm.free(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_prefix_is_reused_in_the_same_scope_only():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = seq(range(11))
    compute(bm, first)
    first_blocks = first.block_table
    bm.free(first)
    same = seq(list(range(11)) + [99])
    assert bm.find_cached_blocks(same) == first_blocks[:2]
    assert bm.find_cached_blocks(seq(range(11), cache_key=b"tenant-b")) == []
    assert bm.find_cached_blocks(seq(range(11), cache_key=b"tenant-a+lora")) == []
    compute(bm, same)
    assert same.num_cached_tokens == 8


def test_the_last_token_is_always_computed():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = seq(range(8))
    compute(bm, first)
    again = seq(range(8))
    assert len(bm.find_cached_blocks(again)) == 1  # not 2: the last token needs its logits


def test_a_divergent_block_stops_the_match():
    bm = BlockManager(num_blocks=16, block_size=4)
    compute(bm, seq(range(12)))
    other = seq([0, 1, 2, 3, 9, 9, 9, 9, 8, 9, 10, 11, 12])
    assert len(bm.find_cached_blocks(other)) == 1


def test_cached_blocks_are_evicted_when_memory_is_needed():
    bm = BlockManager(num_blocks=4, block_size=4)
    first = seq(range(9))
    compute(bm, first)
    bm.free(first)
    assert bm.num_free_blocks == 4
    big = seq(range(100, 116))
    compute(bm, big)  # needs all four blocks, evicting the cached prefix
    assert bm.find_cached_blocks(seq(range(9))) == []


def test_shared_blocks_are_freed_only_by_their_last_user():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(range(9))
    compute(bm, a)
    b = seq(range(9))
    compute(bm, b)
    assert b.block_table[:2] == a.block_table[:2]
    bm.free(a)
    assert bm.num_used_blocks == 3  # b still holds the two shared blocks and its own third
    bm.free(b)
    assert bm.num_used_blocks == 0


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = seq(range(10))
    compute(bm, parent)
    child = seq(range(10))
    copies = bm.fork(parent, child)
    assert child.block_table[:2] == parent.block_table[:2]
    assert copies == [(parent.block_table[2], child.block_table[2])]
    assert child.block_table[2] != parent.block_table[2]
    assert child.num_computed_tokens == 10
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8
