"""The scheduler: which sequences compute how many tokens this step. No torch.

Each step has a token budget (`max_num_batched_tokens`). Running sequences
go first, in admission order: a decoding sequence needs one token, a
sequence in the middle of a long prompt takes what is left of the budget
(chunked prefill), so a long prompt never stalls the decodes already running.
(New requests are admitted once the prompt's last chunk leaves budget over.)
Then waiting sequences are admitted (priority, then arrival) while the
budget, `max_num_seqs`, free KV blocks and LoRA slots allow; a prompt that
is already in the prefix cache starts from its cached blocks.

The result is a plan `{sequence: num_tokens}` (vLLM v1 style): no prefill
and decode phases. When KV blocks run out, the most recently admitted
sequence of the lowest class is preempted: its blocks are freed and it waits
to be recomputed (mostly from the prefix cache).

Priority classes (`GenerateRequest.priority`, lower first: interactive, then
batch) are planned in turn: a class's running sequences, then its waiting
ones, with what the classes above left of the budget. So batch rows fill the
rest of each step, and a waiting interactive sequence that finds no seat or
no KV blocks preempts running batch sequences (newest first) to get them;
nothing of a lower class is admitted while a higher one waits for room.

Batch rows are also held to token caps of their own while interactive traffic is about.
A step cannot be interrupted: an interactive request that arrives waits for the step in
progress. So while any interactive sequence runs or waits, batch rows add at most
`batch_tokens_with_interactive` tokens to a step (a batch prompt advances in small chunks
and only that many batch rows decode; the others wait, keeping their KV), and for
`batch_full_after_steps` steps after the last interactive work, batch-only steps stay at
`batch_step_tokens`, so the next interactive arrival waits for a short step only. Once
that many steps passed without interactive work, batch rows fill whole steps again (the
throughput of a batch on an otherwise idle server). 0 lifts a cap (for
`batch_full_after_steps`: the caps are never lifted).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ownllm.engine.adapter_slots import AdapterSlots
from ownllm.engine.block_manager import BlockManager
from ownllm.engine.messages import PRIORITY_BATCH
from ownllm.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    plan: dict[Sequence, int] = field(default_factory=dict)  # in row order
    new_slots: list[tuple[tuple, int]] = field(default_factory=list)  # (adapter key, slot) to load
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.plan.values())


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        adapter_slots: AdapterSlots,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        batch_step_tokens: int = 0,
        batch_tokens_with_interactive: int = 0,
        batch_full_after_steps: int = 0,
    ) -> None:
        self.block_manager = block_manager
        self.adapter_slots = adapter_slots
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.batch_step_tokens = batch_step_tokens  # 0: no cap of its own
        self.batch_tokens_with_interactive = batch_tokens_with_interactive
        self.batch_full_after_steps = batch_full_after_steps
        self._quiet_steps = 1 << 62  # steps planned since the last interactive work (none yet)
        self.waiting: list[Sequence] = []  # sorted by (priority, arrival)
        self.running: list[Sequence] = []  # admission order

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def add_running(self, seq: Sequence) -> None:
        """A forked choice that already holds blocks and a slot."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Stop `seq` (done or aborted) and free its blocks and slot."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        if seq.adapter_key:
            self.adapter_slots.release(seq.adapter_key)
            seq.lora_slot = -1

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed_tokens = 0
        out.preempted.append(seq)
        self.add(seq)

    def schedule(self) -> SchedulerOutput:
        """The plan of one step: each priority class in turn (interactive first), its
        running sequences then its waiting ones, so a lower class gets only what the
        classes above it left of the token budget, seats and KV blocks."""
        out = SchedulerOutput()
        self._budget = self.max_num_batched_tokens
        classes = sorted({s.priority for s in self.running} | {s.priority for s in self.waiting})
        interactive = bool(classes) and classes[0] < PRIORITY_BATCH
        self._quiet_steps = 0 if interactive else self._quiet_steps + 1
        for priority in classes:
            if priority >= PRIORITY_BATCH:
                self._budget = min(self._budget, self._batch_cap(interactive))
            self._schedule_running(priority, out)
            if not self._admit_waiting(priority, out):
                break  # a sequence of this class waits for room: none below it takes it
        return out

    def _batch_cap(self, interactive: bool) -> int:
        """The most tokens batch-class rows may compute this step."""
        full = self.max_num_batched_tokens
        if interactive:
            cap = self.batch_tokens_with_interactive or self.batch_step_tokens
        elif self.batch_full_after_steps and self._quiet_steps > self.batch_full_after_steps:
            return full  # no interactive work for a while: whole steps
        else:
            cap = self.batch_step_tokens
        return min(cap, full) if cap else full

    def _schedule_running(self, priority: int, out: SchedulerOutput) -> None:
        bm = self.block_manager
        for seq in [s for s in self.running if s.priority == priority]:
            if self._budget == 0:
                return
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted below, earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, self._budget)
            while not bm.can_allocate(seq, num_new):
                victim = self._victim()
                self._preempt(victim, out)
                self._budget += out.plan.pop(victim, 0)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            bm.allocate(seq, num_new)
            out.plan[seq] = num_new
            self._budget -= num_new

    def _admit_waiting(self, priority: int, out: SchedulerOutput) -> bool:
        """Admit waiting sequences of `priority`, preempting lower classes for seats and KV
        blocks; False when one is left waiting for room (not for its adapter slot)."""
        bm = self.block_manager
        for seq in [s for s in self.waiting if s.priority == priority]:
            if self._budget == 0:
                return False
            needs_load = False
            if seq.adapter_key:
                acquired = self.adapter_slots.acquire(seq.adapter_key)
                if acquired is None:
                    continue  # every slot is pinned: try a sequence on a resident adapter
                seq.lora_slot, needs_load = acquired
            fits = self._make_room(seq, out)
            while fits:
                cached = bm.find_cached_blocks(seq)
                num_new = min(seq.num_tokens - len(cached) * bm.block_size, self._budget)
                if bm.can_allocate(seq, num_new, cached):
                    break
                fits = self._preempt_below(seq, out)
            if not fits:
                if seq.adapter_key:
                    self.adapter_slots.release(seq.adapter_key)
                    if needs_load:
                        self.adapter_slots.discard(seq.adapter_key)
                    seq.lora_slot = -1
                return False
            if needs_load:
                out.new_slots.append((seq.adapter_key, seq.lora_slot))
            bm.allocate(seq, num_new, cached)
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.plan[seq] = num_new
            self._budget -= num_new
        return True

    def _has_seat(self, seq: Sequence) -> bool:
        num_seqs = len(self.running) + sum(s.num_forks for s in self.running)
        if num_seqs >= self.max_num_seqs:
            return False
        return not self.running or num_seqs + 1 + seq.num_forks <= self.max_num_seqs

    def _make_room(self, seq: Sequence, out: SchedulerOutput) -> bool:
        """A seat for `seq`, preempting lower classes for it; False when none is left."""
        while not self._has_seat(seq):
            if not self._preempt_below(seq, out):
                return False
        return True

    def _preempt_below(self, seq: Sequence, out: SchedulerOutput) -> bool:
        """Preempt one running sequence of a class below `seq`'s; False when none runs."""
        victim = self._victim(below=seq.priority)
        if victim is None:
            return False
        self._preempt(victim, out)
        self._budget += out.plan.pop(victim, 0)
        return True

    def _victim(self, below: int | None = None) -> Sequence | None:
        """The running sequence to preempt: of the lowest class, the last admitted; only
        classes lower than `below` when given."""
        candidates = [
            (s.priority, i, s)
            for i, s in enumerate(self.running)
            if below is None or s.priority > below
        ]
        return max(candidates, key=lambda c: c[:2])[2] if candidates else None

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Advance progress of the sequences that ran and publish their full blocks."""
        for seq, num_new in out.plan.items():
            seq.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(seq)
