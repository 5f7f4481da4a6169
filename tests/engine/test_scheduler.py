"""The scheduler's plan: token budget, chunked prefill, seat and slot limits, preemption."""

from __future__ import annotations

from ownllm.engine.adapter_slots import AdapterSlots
from ownllm.engine.block_manager import BlockManager
from ownllm.engine.scheduler import Scheduler
from ownllm.engine.sequence import Sequence, SequenceStatus


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, num_slots=2) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, block_size),
        AdapterSlots(num_slots),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
    )


def seq(num_tokens: int, adapter: str = "", priority: int = 0, first: int = 0) -> Sequence:
    key = ((adapter, 1.0),) if adapter else ()
    tokens = list(range(first, first + num_tokens))
    return Sequence("r", tokens, adapter_key=key, priority=priority)


def step(s: Scheduler, sample: bool = True) -> dict[Sequence, int]:
    """One schedule + 'run': sequences that finished their prompt get one new token."""
    out = s.schedule()
    s.on_step_done(out)
    if sample:
        for q in out.plan:
            if q.num_computed_tokens == q.num_tokens:
                q.token_ids.append(1)
    return out.plan


def test_long_prompt_is_chunked_and_never_stalls_running_decodes():
    s = make(budget=16)
    a, b = seq(3), seq(3)
    s.add(a)
    s.add(b)
    step(s)  # both prompts fit in one step
    long = seq(40)
    s.add(long)
    plans = [step(s) for _ in range(3)]
    for plan in plans:
        assert plan[a] == 1 and plan[b] == 1  # decodes run every step
        assert sum(plan.values()) <= 16
    assert [p[long] for p in plans] == [14, 14, 12]  # the prompt in chunks of what is left


def test_max_num_seqs_bounds_the_running_set():
    s = make(max_num_seqs=2)
    seqs = [seq(2) for _ in range(3)]
    for q in seqs:
        s.add(q)
    assert set(step(s)) == set(seqs[:2])
    assert seqs[2].status is SequenceStatus.WAITING
    s.finish(seqs[0], "stop")
    assert seqs[2] in step(s)


def test_lower_priority_value_is_admitted_first():
    s = make(max_num_seqs=1)
    late, urgent = seq(2, priority=5), seq(2, priority=-1)
    s.add(late)
    s.add(urgent)
    assert list(step(s)) == [urgent]


def test_sequences_on_other_adapters_wait_for_a_free_slot_not_the_queue():
    s = make(num_slots=1)
    first, other, same = seq(2, "a"), seq(2, "b"), seq(2, "a")
    for q in (first, other, same):
        s.add(q)
    out = s.schedule()
    assert set(out.plan) == {first, same}  # "b" cannot get the only slot while "a" runs
    assert out.new_slots == [(first.adapter_key, first.lora_slot)]
    s.on_step_done(out)
    s.finish(first, "stop")
    s.finish(same, "stop")
    out = s.schedule()
    assert list(out.plan) == [other]  # the slot was freed and "a" evicted (LRU)
    assert out.new_slots == [(other.adapter_key, 0)]


def test_out_of_blocks_preempts_the_newest_sequence():
    s = make(num_blocks=4, block_size=4, budget=64)
    old, new = seq(7), seq(7, first=100)  # different prompts: no prefix sharing
    s.add(old)
    s.add(new)
    step(s)
    for _ in range(2):
        step(s)  # 9 tokens each now: both need a third block, only 4 exist
    assert old.status is SequenceStatus.RUNNING
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert s.block_manager.num_used_blocks == len(old.block_table)


def test_finish_frees_blocks_and_slot_pin():
    s = make(num_slots=1)
    q = seq(5, "a")
    s.add(q)
    step(s)
    s.finish(q, "abort")
    assert s.block_manager.num_used_blocks == 0
    assert s.adapter_slots.pins == [0]
    assert not s.has_work
