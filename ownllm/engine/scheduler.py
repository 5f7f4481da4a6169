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
sequence is preempted: its blocks are freed and it waits to be recomputed
(mostly from the prefix cache).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ownllm.engine.adapter_slots import AdapterSlots
from ownllm.engine.block_manager import BlockManager
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
    ) -> None:
        self.block_manager = block_manager
        self.adapter_slots = adapter_slots
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
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
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted below, earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not bm.can_allocate(seq, num_new):
                victim = self.running[-1]
                self._preempt(victim, out)
                out.plan.pop(victim, None)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            bm.allocate(seq, num_new)
            out.plan[seq] = num_new
            budget -= num_new

        num_seqs = len(self.running) + sum(s.num_forks for s in self.running)
        for seq in list(self.waiting):
            if budget == 0 or num_seqs >= self.max_num_seqs:
                break
            if self.running and num_seqs + 1 + seq.num_forks > self.max_num_seqs:
                break
            needs_load = False
            if seq.adapter_key:
                acquired = self.adapter_slots.acquire(seq.adapter_key)
                if acquired is None:
                    continue  # every slot is pinned: try a sequence on a resident adapter
                seq.lora_slot, needs_load = acquired
            cached = bm.find_cached_blocks(seq)
            num_new = min(seq.num_tokens - len(cached) * bm.block_size, budget)
            if not bm.can_allocate(seq, num_new, cached):
                if seq.adapter_key:
                    self.adapter_slots.release(seq.adapter_key)
                    if needs_load:
                        self.adapter_slots.discard(seq.adapter_key)
                    seq.lora_slot = -1
                break
            if needs_load:
                out.new_slots.append((seq.adapter_key, seq.lora_slot))
            bm.allocate(seq, num_new, cached)
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.plan[seq] = num_new
            budget -= num_new
            num_seqs += 1 + seq.num_forks
        return out

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Advance progress of the sequences that ran and publish their full blocks."""
        for seq, num_new in out.plan.items():
            seq.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(seq)
