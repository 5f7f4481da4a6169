"""KV-cache blocks: allocation, reference counts and prefix caching. No torch.

The cache is `num_blocks` blocks of `block_size` token slots. A sequence owns
a block table (block ids in order). A block that is full and computed gets a
hash that chains the hash of the block before it, the block's tokens, and the
sequence's `cache_key` (tenant scope + adapter set: LoRA on k/v changes the
KV, and one tenant's prompt must never be served from another's cache). A
later sequence whose leading blocks hash the same reuses them instead of
computing them again.

Freed blocks keep their hash and stay reusable until the allocator needs
them for something else (least recently freed first).

Left out: swapping blocks to host memory (a preempted sequence is recomputed,
mostly from the prefix cache).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from ownllm.engine.sequence import Sequence


def block_hash(prev_hash: bytes, cache_key: bytes, token_ids: list[int] | tuple[int, ...]) -> bytes:
    digest = hashlib.sha256(prev_hash)
    digest.update(cache_key)
    digest.update(b"|")
    digest.update(",".join(map(str, token_ids)).encode())
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        self.hash_to_block: dict[bytes, int] = {}
        # unreferenced blocks, least recently freed first; cached ones may be revived
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------
    def _full_block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Hashes of the first `num_blocks` full blocks of `seq` (memoised on the sequence)."""
        bs = self.block_size
        hashes = seq.block_hashes
        while len(hashes) < num_blocks:
            i = len(hashes)
            prev = hashes[-1] if hashes else b""
            hashes.append(block_hash(prev, seq.cache_key, seq.token_ids[i * bs : (i + 1) * bs]))
        return hashes[:num_blocks]

    def find_cached_blocks(self, seq: Sequence) -> list[int]:
        """Block ids that already hold the KV of `seq`'s leading tokens.

        The last token is always left to compute, since its logits are needed.
        """
        if not self.enable_prefix_caching or seq.num_computed_tokens:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        found = []
        for h in self._full_block_hashes(seq, max_blocks):
            block_id = self.hash_to_block.get(h)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the computed full blocks of `seq` so later sequences can reuse them."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for i, h in enumerate(self._full_block_hashes(seq, num_full)):
            block_id = seq.block_table[i]
            if self.block_hashes[block_id] is None and h not in self.hash_to_block:
                self.block_hashes[block_id] = h
                self.hash_to_block[h] = block_id

    # -- allocation -----------------------------------------------------------
    def num_new_blocks(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> int:
        num_owned = max(len(seq.block_table), len(cached))
        total = seq.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        return max(0, self.num_blocks_for(total) - num_owned)

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> bool:
        revived = sum(1 for b in cached if self.ref_counts[b] == 0)
        needed = self.num_new_blocks(seq, num_new_tokens, cached)
        return needed + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> None:
        """Give `seq` the blocks for `num_new_tokens` more tokens, reusing `cached` first."""
        if cached:
            assert not seq.block_table and seq.num_computed_tokens == 0
            for block_id in cached:
                self._ref(block_id)
            seq.block_table = list(cached)
            seq.num_computed_tokens = len(cached) * self.block_size
            seq.num_cached_tokens = max(seq.num_cached_tokens, seq.num_computed_tokens)
        for _ in range(self.num_new_blocks(seq, num_new_tokens)):
            seq.block_table.append(self._take_free_block())

    def _ref(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            del self.free_blocks[block_id]
        self.ref_counts[block_id] += 1

    def _take_free_block(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        old = self.block_hashes[block_id]
        if old is not None:  # evict it from the prefix cache
            if self.hash_to_block.get(old) == block_id:
                del self.hash_to_block[old]
            self.block_hashes[block_id] = None
        self.ref_counts[block_id] = 1
        return block_id

    def free(self, seq: Sequence) -> None:
        # the tail is freed first so it is evicted first: prefixes outlive suffixes
        for block_id in reversed(seq.block_table):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                if self.block_hashes[block_id] is None:
                    self.free_blocks[block_id] = None
                    self.free_blocks.move_to_end(block_id, last=False)  # reuse uncached first
                else:
                    self.free_blocks[block_id] = None
        seq.block_table = []

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """Share `parent`'s full blocks with `child`; copy its last, partial block.

        Returns the (src, dst) block copies the model runner must do, or raises
        `MemoryError` when there is no free block for the copy.
        """
        bs = self.block_size
        num_full = parent.num_computed_tokens // bs
        child.block_table = []
        for block_id in parent.block_table[:num_full]:
            self._ref(block_id)
            child.block_table.append(block_id)
        copies = []
        if parent.num_computed_tokens % bs:
            if not self.free_blocks:
                self.free(child)
                raise MemoryError("no free KV block to fork into")
            dst = self._take_free_block()
            copies.append((parent.block_table[num_full], dst))
            child.block_table.append(dst)
        child.num_computed_tokens = parent.num_computed_tokens
        child.num_cached_tokens = parent.num_cached_tokens
        child.block_hashes = list(parent.block_hashes[:num_full])
        return copies
