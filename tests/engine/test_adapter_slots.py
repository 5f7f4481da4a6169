"""Resident LoRA slots: least recently used unpinned slot is evicted first."""

from __future__ import annotations

from ownllm.engine.adapter_slots import AdapterSlots

A, B, C = (("a", 1.0),), (("b", 1.0),), (("c", 1.0),)


def test_lru_eviction_skips_pinned_slots():
    slots = AdapterSlots(2)
    slot_a, new_a = slots.acquire(A)
    slot_b, new_b = slots.acquire(B)
    assert new_a and new_b and slot_a != slot_b
    assert slots.acquire(C) is None  # both pinned
    slots.release(B)
    slots.release(A)
    assert slots.acquire(A) == (slot_a, False)  # resident: no load, now most recently used
    slots.release(A)
    slot_c, new_c = slots.acquire(C)
    assert new_c and slot_c == slot_b  # b was least recently used
    assert B not in slots and A in slots


def test_a_replaced_adapter_is_dropped_when_its_last_user_ends():
    slots = AdapterSlots(2)
    slots.acquire(A)
    slots.discard(A)  # e.g. the adapter was re-uploaded while a request used it
    assert A in slots
    assert slots.acquire(A) is None  # new requests wait for the fresh weights
    slots.release(A)
    assert A not in slots
    assert slots.acquire(A) == (0, True)  # loaded again, from the new files
