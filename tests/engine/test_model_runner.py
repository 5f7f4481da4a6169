"""The order of a step's rows: what attention's grouping and the LoRA tiles rely on."""

from __future__ import annotations

from ownllm.engine.model_runner import row_order
from ownllm.engine.sequence import Sequence


def seq(name: str, lora_slot: int) -> Sequence:
    s = Sequence(name, [1, 2, 3])
    s.lora_slot = lora_slot
    return s


def test_decodes_first_then_chunks_longest_first_base_rows_last_within_each():
    plan = {
        seq("chunk5-base", -1): 5,
        seq("decode-slot1", 1): 1,
        seq("chunk5-slot0", 0): 5,
        seq("decode-base", -1): 1,
        seq("chunk9-slot2", 2): 9,
        seq("decode-slot0", 0): 1,
        seq("chunk5-slot3", 3): 5,
    }
    ordered = [s.request_id for s, _ in sorted(plan.items(), key=row_order)]
    assert ordered == [
        "decode-slot0",
        "decode-slot1",
        "decode-base",
        "chunk9-slot2",
        "chunk5-slot0",
        "chunk5-slot3",
        "chunk5-base",
    ]
