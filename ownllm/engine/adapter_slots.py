"""Which adapter set sits in which resident LoRA slot (LRU, pinned while in use). No torch.

A slot holds one adapter set: a single adapter, or up to four stacked with
weights (composed into one slot). Sequences pin their slot while they run;
an unpinned slot is evicted least recently used first when a new set needs
room. The weights themselves live in `ownllm.engine.lora`.
"""

from __future__ import annotations

from collections import OrderedDict


class AdapterSlots:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self.key_to_slot: OrderedDict[tuple, int] = OrderedDict()  # least recently used first
        self.pins = [0] * num_slots
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.stale: set[tuple] = set()  # replaced while pinned: dropped when the last user ends

    def __contains__(self, key: tuple) -> bool:
        return key in self.key_to_slot

    def acquire(self, key: tuple) -> tuple[int, bool] | None:
        """Pin a slot for `key`: (slot, needs_load), or None when every slot is pinned."""
        if key in self.stale:
            return None  # still serving the old weights to running sequences
        slot = self.key_to_slot.get(key)
        if slot is not None:
            self.key_to_slot.move_to_end(key)
            self.pins[slot] += 1
            return slot, False
        if not self.free_slots:
            victim = next((k for k, s in self.key_to_slot.items() if self.pins[s] == 0), None)
            if victim is None:
                return None
            self.free_slots.append(self.key_to_slot.pop(victim))
        slot = self.free_slots.pop()
        self.key_to_slot[key] = slot
        self.pins[slot] = 1
        return slot, True

    def release(self, key: tuple) -> None:
        slot = self.key_to_slot.get(key)
        if slot is not None and self.pins[slot] > 0:
            self.pins[slot] -= 1
            if self.pins[slot] == 0 and key in self.stale:
                self.discard(key)

    def discard(self, key: tuple) -> None:
        """Forget `key` (failed load, adapter replaced or unloaded); a pinned key is
        forgotten when its last sequence releases it."""
        slot = self.key_to_slot.get(key)
        if slot is None:
            return
        if self.pins[slot]:
            self.stale.add(key)
            return
        del self.key_to_slot[key]
        self.stale.discard(key)
        self.free_slots.append(slot)

    def keys_with(self, adapter_id: str) -> list[tuple]:
        return [k for k in self.key_to_slot if any(a == adapter_id for a, _ in k)]
