"""The model runner: turns a scheduler plan into tensors, owns the KV cache, runs the model.

Rows of a step are ordered decodes first, then prompt chunks longest first,
so attention can group them with little padding (see `attention.py`), and by
LoRA slot within those, so adapter rows often form plain slices (see `lora.py`). All
per-step metadata (positions, rotary tables, cache slots, attention groups,
LoRA tiles, which rows need logits) is built here once and handed to the
model explicitly.
"""

from __future__ import annotations

import torch

from ownllm.engine.attention import AttentionMetadata, build_groups
from ownllm.engine.lora import LoraStacks, build_lora_batch
from ownllm.engine.model import Model, StepInput
from ownllm.engine.sequence import Sequence


class ModelRunner:
    def __init__(
        self, model: Model, num_blocks: int, block_size: int, lora: LoraStacks | None
    ) -> None:
        args = model.args
        self.model, self.block_size, self.lora = model, block_size, lora
        self.device = model.device
        # [layers, k/v, blocks, block_size, Hkv, D]; zeros so masked slots are never NaN
        self.kv_caches = torch.zeros(
            args.num_layers,
            2,
            num_blocks,
            block_size,
            args.num_kv_heads,
            args.head_dim,
            dtype=model.dtype,
            device=model.device,
        )

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole KV blocks (src -> dst) in every layer: the partial block of a fork."""
        if copies:
            src = torch.tensor([s for s, _ in copies], device=self.device)
            dst = torch.tensor([d for _, d in copies], device=self.device)
            self.kv_caches[:, :, dst] = self.kv_caches[:, :, src]

    def prepare(self, plan: dict[Sequence, int]) -> tuple[StepInput, list[Sequence]]:
        """Step tensors for `plan`, and the sequences (in logits-row order) that sample."""
        bs = self.block_size
        ordered = sorted(plan.items(), key=row_order)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        row_slots: list[int] = []
        chunks = []
        logits_rows: list[int] = []
        sampling: list[Sequence] = []
        for seq, n in ordered:
            start, table = seq.num_computed_tokens, seq.block_table
            row = len(ids)
            ids += seq.token_ids[start : start + n]
            span = range(start, start + n)
            positions += span
            slots += [table[p // bs] * bs + p % bs for p in span]
            row_slots += [seq.lora_slot] * n
            chunks.append((start, n, table))
            if start + n == seq.num_tokens:
                logits_rows.append(row + n - 1)
                sampling.append(seq)
        device = self.device
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        args = self.model.args
        attention = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            groups=build_groups(
                chunks,
                bs,
                args.num_heads // args.num_kv_heads,
                args.num_kv_heads,
                device,
                args.sliding_window,
                fused_decode=self.model.ops.fused_decode,
            ),
        )
        lora = None
        if self.lora is not None:
            lora = build_lora_batch(row_slots, self.lora.num_slots, self.model.dtype, device)
        step = StepInput(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            rotary=self.model.rotary_table(pos),
            attention=attention,
            lora=lora,
            logits_rows=torch.tensor(logits_rows, dtype=torch.long, device=device),
        )
        return step, sampling

    def run(self, plan: dict[Sequence, int]) -> tuple[torch.Tensor, list[Sequence]]:
        """Logits [N, V] float32 for the sequences that sample this step, and those sequences."""
        step, sampling = self.prepare(plan)
        logits = self.model.forward(step, self.kv_caches, self.lora)
        return logits, sampling


def row_order(item: tuple[Sequence, int]) -> tuple[bool, int, bool, int]:
    """Decodes first, then prompt chunks longest first; within those by LoRA slot,
    base-model rows (slot -1) last."""
    seq, num_tokens = item
    is_base = seq.lora_slot < 0
    return (num_tokens != 1, -num_tokens, is_base, seq.lora_slot)
