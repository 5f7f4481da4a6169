"""The scheduler's plan: token budget, chunked prefill, seat and slot limits, preemption."""

from __future__ import annotations

from ownllm.engine.adapter_slots import AdapterSlots
from ownllm.engine.block_manager import BlockManager
from ownllm.engine.scheduler import Scheduler
from ownllm.engine.sequence import Sequence, SequenceStatus


def make(
    num_blocks=64,
    block_size=4,
    max_num_seqs=8,
    budget=32,
    num_slots=2,
    batch=0,
    beside=0,
    full_after=0,
) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, block_size),
        AdapterSlots(num_slots),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        batch_step_tokens=batch,
        batch_tokens_with_interactive=beside,
        batch_full_after_steps=full_after,
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


# -- priority classes: interactive (0) first, batch (1) fills the rest --------------------

INTERACTIVE, BATCH = 0, 1


def test_interactive_rows_take_the_budget_first_and_batch_rows_fill_the_rest():
    s = make(budget=16)
    bulk = seq(40, priority=BATCH)
    s.add(bulk)
    assert step(s) == {bulk: 16}  # alone, the batch prompt takes the whole budget
    chat = seq(10, priority=INTERACTIVE, first=100)
    s.add(chat)
    assert step(s) == {chat: 10, bulk: 6}  # admitted ahead of the running batch chunk
    assert step(s) == {chat: 1, bulk: 15}  # its decode first, the batch the other 15


def test_a_waiting_interactive_sequence_preempts_the_newest_batch_row_for_a_seat():
    s = make(max_num_seqs=2)
    old, new = seq(3, priority=BATCH), seq(3, priority=BATCH, first=10)
    s.add(old)
    s.add(new)
    step(s)
    chat = seq(3, priority=INTERACTIVE, first=20)
    s.add(chat)
    out = s.schedule()
    assert out.preempted == [new]
    assert set(out.plan) == {chat, old}
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    s.on_step_done(out)
    s.finish(chat, "stop")
    assert new in step(s)  # back once the interactive one is done


def test_a_waiting_interactive_sequence_preempts_batch_rows_for_kv_blocks():
    s = make(num_blocks=4, block_size=4, budget=64)
    bulk = [seq(8, priority=BATCH, first=10 * i) for i in range(2)]  # 2 blocks each
    for q in bulk:
        s.add(q)
    step(s, sample=False)
    assert s.block_manager.num_free_blocks == 0
    chat = seq(6, priority=INTERACTIVE, first=100)
    s.add(chat)
    out = s.schedule()
    assert out.preempted == [bulk[1]]  # the newest batch row, and only as many as needed
    assert out.plan == {bulk[0]: 0, chat: 6}  # bulk[0] has nothing left to compute
    assert chat.status is SequenceStatus.RUNNING and bulk[0].status is SequenceStatus.RUNNING


def test_no_batch_row_is_admitted_while_an_interactive_one_waits_for_room():
    s = make(max_num_seqs=1)
    chat = seq(3, priority=INTERACTIVE)
    s.add(chat)
    step(s)
    waiting_chat = seq(3, priority=INTERACTIVE, first=10)
    bulk = seq(3, priority=BATCH, first=20)
    s.add(waiting_chat)
    s.add(bulk)
    plan = step(s)
    assert plan == {chat: 1}  # interactive work is never preempted for its own class
    assert waiting_chat.status is SequenceStatus.WAITING
    assert bulk.status is SequenceStatus.WAITING


def test_running_out_of_blocks_preempts_a_batch_row_before_a_newer_interactive_one():
    s = make(num_blocks=4, block_size=4, budget=64)
    bulk = seq(7, priority=BATCH)
    chat = seq(7, priority=INTERACTIVE, first=50)
    s.add(bulk)
    step(s)  # bulk: 2 blocks
    s.add(chat)
    step(s)  # chat: 2 blocks; every block is used, both decoding
    assert s.block_manager.num_free_blocks == 0
    out = s.schedule()  # both need a third block: only one can have it
    assert out.preempted == [bulk]
    assert chat in out.plan and bulk not in out.plan


def test_with_one_class_the_plan_is_as_before():
    s = make(budget=8)
    a, b = seq(5, priority=BATCH), seq(5, priority=BATCH, first=10)
    s.add(a)
    s.add(b)
    assert step(s) == {a: 5, b: 3}


# -- the batch caps: a few batch tokens beside interactive work, short batch-only steps
# for a while after it (here, with full_after=0, for ever) ----------------------------------


def test_alone_a_batch_prompt_advances_in_chunks_of_batch_step_tokens():
    s = make(budget=32, batch=8, beside=2)
    bulk, other = seq(20, priority=BATCH), seq(20, priority=BATCH, first=50)
    s.add(bulk)
    s.add(other)
    assert step(s) == {bulk: 8}  # not the whole budget of 32: the step stays short
    assert step(s) == {bulk: 8}
    assert step(s) == {bulk: 4, other: 4}  # the cap is for the class, not per row
    chat = seq(20, priority=INTERACTIVE, first=100)
    s.add(chat)
    # interactive rows are never capped; the batch rows beside them add 2 tokens, not 12
    assert step(s) == {chat: 20, bulk: 1, other: 1}


def test_beside_interactive_work_batch_rows_get_only_their_small_share():
    s = make(budget=32, batch=8, beside=2)
    rows = [seq(2, priority=BATCH, first=10 * i) for i in range(4)]
    for q in rows:
        s.add(q)
    assert step(s) == {rows[0]: 2, rows[1]: 2, rows[2]: 2, rows[3]: 2}  # 8, all decoding next
    chat = seq(5, priority=INTERACTIVE, first=100)
    s.add(chat)
    plan = step(s)  # waiting interactive work: batch rows add 2 tokens, not 27
    assert plan == {chat: 5, rows[0]: 1, rows[1]: 1}
    plan = step(s)  # still there while the interactive row decodes
    assert plan == {chat: 1, rows[0]: 1, rows[1]: 1}
    assert all(q.status is SequenceStatus.RUNNING for q in rows)  # the others keep their KV
    s.finish(chat, "stop")
    plan = step(s)  # gone: the batch rows are back to batch_step_tokens
    assert plan == {q: 1 for q in rows}


def test_an_interactive_arrival_preempts_batch_rows_that_hold_every_seat():
    s = make(max_num_seqs=3, budget=32, batch=8, beside=2)
    rows = [seq(2, priority=BATCH, first=10 * i) for i in range(3)]
    for q in rows:
        s.add(q)
    step(s)
    chat = seq(4, priority=INTERACTIVE, first=100)
    s.add(chat)
    out = s.schedule()
    assert out.preempted == [rows[2]]  # the newest batch row gives up its seat
    assert out.plan == {chat: 4, rows[0]: 1, rows[1]: 1}


def test_caps_of_zero_leave_the_plan_as_before():
    s = make(budget=16)
    bulk = seq(40, priority=BATCH)
    s.add(bulk)
    assert step(s) == {bulk: 16}
    s.add(seq(10, priority=INTERACTIVE, first=100))
    assert sum(step(s).values()) == 16


def test_batch_rows_fill_whole_steps_again_after_quiet_steps():
    s = make(budget=32, batch=4, beside=2, full_after=3)
    bulk = seq(200, priority=BATCH)
    s.add(bulk)
    assert step(s) == {bulk: 32}  # no interactive work yet: the whole budget
    chat = seq(2, priority=INTERACTIVE, first=500)
    s.add(chat)
    assert step(s) == {chat: 2, bulk: 2}
    s.finish(chat, "stop")
    # three steps without interactive work stay short, for the next arrival's sake
    assert [step(s)[bulk] for _ in range(4)] == [4, 4, 4, 32]
    s.add(seq(2, priority=INTERACTIVE, first=600))
    assert step(s)[bulk] == 2  # back beside interactive work at once
    assert step(s)[bulk] == 2  # it decodes: still there
