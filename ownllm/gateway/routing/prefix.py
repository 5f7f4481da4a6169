"""Tenant-scoped prompt-prefix hashes and an approximate per-replica index of them.

A prompt's token ids are cut into blocks of `block_tokens` (vLLM's KV block size, 16 by
default); block i's hash covers the scope and every token up to the end of block i, as a chain:
`h[i] = hash((h[i-1], *block_i))`, with `h[-1]` derived from the scope, which the router
makes of the tenant id and the adapter set. Two requests share the first k hashes exactly
when they share the first k blocks, the tenant and the adapters, which is when a replica's
prefix cache (keyed so in ownllm's engine, and by vLLM's `cache_salt` and LoRA id) can
reuse them. A partial last block is not hashed: no engine
caches it.

`PrefixIndex` is what the router remembers of one replica: the block hashes of the
prompts it recently routed there, most recent last, at most `capacity` of them. It is
approximate on purpose (llm-d's "approximate prefix cache" scorer): the replica may have
evicted a block the index still holds, or kept one the index dropped. Being wrong costs
one cold prefill, never a wrong answer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

MAX_BLOCKS = 256  # longer prompts: only their first 256 blocks are hashed (bounded cost)


def scope_seed(scope: str) -> int:
    """The chain's start for a tenant: a stable 64-bit digest (str hash() is salted per
    process; several gateway replicas must agree)."""
    return int.from_bytes(hashlib.blake2b(scope.encode(), digest_size=8).digest(), "little")


def prefix_hashes(
    scope: str, token_ids: Sequence[int], block_tokens: int = 16, max_blocks: int = MAX_BLOCKS
) -> list[int]:
    """The hash of every full block of `token_ids`, chained from the tenant `scope`."""
    hashes: list[int] = []
    h = scope_seed(scope)
    num_blocks = min(len(token_ids) // block_tokens, max_blocks)
    for i in range(num_blocks):
        h = hash((h, *token_ids[i * block_tokens : (i + 1) * block_tokens]))
        hashes.append(h)
    return hashes


class PrefixIndex:
    """Block hashes recently routed to one replica, least recently used first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def num_matched(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` the replica is thought to hold."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def add(self, hashes: Sequence[int]) -> None:
        """Remember `hashes` as just used; drop the least recently used past capacity."""
        blocks = self._blocks
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the replica restarted: its cache is empty)."""
        self._blocks.clear()


class AdapterIndex:
    """Adapter sets recently routed to one replica, at most `capacity` (its LoRA slots),
    least recently used first: where an adapter is thought to be resident."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def __contains__(self, key: tuple[str, ...]) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[str, ...]) -> None:
        if not key:
            return  # the base model takes no slot
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def discard_adapter(self, adapter_id: str) -> None:
        """Forget every set holding `adapter_id` (unloaded or replaced)."""
        for key in [k for k in self._keys if adapter_id in k]:
            del self._keys[key]

    def clear(self) -> None:
        self._keys.clear()
