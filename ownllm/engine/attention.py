"""Attention over the paged KV cache, for a batch that mixes decodes and prompt chunks.

The model runner builds `AttentionMetadata` once per step; every layer reads
it (passed explicitly, no global context). Token rows are ordered: decoding
sequences first (one row each), then prompt chunks, contiguous per sequence.
Sequences are attended in groups of similar query length so padding stays
small: one group for all decodes, a few padded groups for prompt chunks.

Per layer: the step's new k/v are written into their cache slots, then each
prompt group gathers its sequences' blocks (`[B, S, Hkv, D]`) and calls SDPA
with a boolean mask (causal, context length, optional sliding window).
The query heads sharing one kv head are folded into the query length
dimension, so K/V are never repeated for GQA.

On CPU, with the C kernels (`cpu_kernels.py`), the rotary and the cache
write are one call per layer, and the decode group is attended straight from
the cache blocks (`attend`).

A whole prompt always takes the same path as a prompt whose prefix came from
the cache: attending it over its own rows with a different kernel was 12%
faster in prefill, but in bfloat16 it rounded differently, so the same greedy
request could answer differently after a prefix-cache hit.

Left out: a fused kernel for prompt chunks on CPU; a paged kernel on CUDA (the
gather copies the context once per layer and group there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ownllm.engine.cpu_kernels import CpuKernels


@dataclass
class AttentionGroup:
    row_start: int  # token rows [row_start, row_end) of the step belong to this group
    row_end: int
    q_len: int  # padded query length (1 for decodes)
    num_seqs: int
    block_tables: torch.Tensor  # [B, num_blocks] long (host), padded with block 0;
    # int32 for the C kernel's decode group
    mask: torch.Tensor | None  # decodes: [B, 1, 1, S] float additive; else [B, 1, G * Q, S]
    # bool; None for the C kernel's decode group
    q_index: torch.Tensor | None  # [B * q_len] rows within the group; None: no padding
    out_index: torch.Tensor | None  # [row_end - row_start] rows of the padded output
    kv_rows: torch.Tensor | None = None  # see `kv_rows`, filled in by `build_groups`
    context_lens: torch.Tensor | None = None  # [B] int32, decodes with the C kernel


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] long: cache slot (block * block_size + offset) per row
    groups: list[AttentionGroup]


def build_groups(
    chunks: list[tuple[int, int, list[int]]],
    block_size: int,
    num_queries_per_kv: int,
    num_kv_heads: int,
    device: torch.device,
    sliding_window: int | None = None,
    fused_decode: bool = False,
) -> list[AttentionGroup]:
    """Groups for `chunks` = [(start position, num tokens, block table)] in row order.
    `fused_decode`: the decode group is for the C kernel (int32 tables and context
    lengths, no mask or gather rows)."""
    groups = []
    i, row = 0, 0
    while i < len(chunks):
        # decodes (one token) together; prompt chunks in runs whose padding stays under 2x
        j, q_len, num_rows = i, 0, 0
        while j < len(chunks):
            n = chunks[j][1]
            if j > i and (n == 1) != (chunks[i][1] == 1):
                break
            if j > i and max(q_len, n) * (j - i + 1) > 2 * (num_rows + n):
                break
            q_len, num_rows, j = max(q_len, n), num_rows + n, j + 1
        if fused_decode and q_len == 1:
            group = _kernel_decode_group(chunks[i:j], row, block_size)
        else:
            group = _build_group(
                chunks[i:j], row, q_len, block_size, num_queries_per_kv, device, sliding_window
            )
            group.kv_rows = kv_rows(group, block_size, num_kv_heads, device)
        groups.append(group)
        row += num_rows
        i = j
    return groups


def _padded_tables(chunks, num_blocks: int) -> list[list[int]]:
    """Each chunk's block table cut or padded (block 0) to `num_blocks`."""
    return [t[:num_blocks] + [0] * (num_blocks - len(t[:num_blocks])) for _, _, t in chunks]


def _kernel_decode_group(chunks, row_start: int, block_size: int) -> AttentionGroup:
    num_blocks = max(-(-(start + 1) // block_size) for start, _, _ in chunks)
    tables = _padded_tables(chunks, num_blocks)
    return AttentionGroup(
        row_start=row_start,
        row_end=row_start + len(chunks),
        q_len=1,
        num_seqs=len(chunks),
        block_tables=torch.tensor(tables, dtype=torch.int32),
        mask=None,
        q_index=None,
        out_index=None,
        context_lens=torch.tensor([start + 1 for start, _, _ in chunks], dtype=torch.int32),
    )


def _build_group(chunks, row_start, q_len, block_size, group_size, device, window):
    num_seqs = len(chunks)
    num_blocks = max(-(-(start + n) // block_size) for start, n, _ in chunks)
    tables = _padded_tables(chunks, num_blocks)
    block_tables = torch.tensor(tables, dtype=torch.long)  # [B, num_blocks]
    starts = torch.tensor([start for start, _, _ in chunks]).view(-1, 1, 1)  # [B, 1, 1]
    lens = torch.tensor([n for _, n, _ in chunks]).view(-1, 1, 1)
    q_off = torch.arange(q_len).view(1, -1, 1)  # [1, Q, 1]
    k_pos = torch.arange(num_blocks * block_size).view(1, 1, -1)  # [1, 1, S]
    q_pos = starts + q_off  # [B, Q, 1]
    is_pad = q_off >= lens  # [B, Q, 1]
    mask = (k_pos <= q_pos) & ~is_pad
    if window:
        mask &= k_pos > q_pos - window
    # padded query rows attend to key 0 so softmax never sees an empty row
    mask |= is_pad & (k_pos == 0)
    if q_len == 1:  # decodes: additive float mask [B, 1, 1, S] for the bmm path
        mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
        mask = mask.unsqueeze(1)
    else:  # [B, 1, G * Q, S] bool for SDPA, query heads of one kv head folded into Q
        mask = mask.unsqueeze(1).expand(num_seqs, group_size, q_len, k_pos.shape[-1])
        mask = mask.reshape(num_seqs, 1, group_size * q_len, -1)
    q_index = out_index = None
    num_rows = int(lens.sum())
    if num_rows != num_seqs * q_len:
        q_rows, out_rows, offset = [], [], 0
        for b, (_, n, _) in enumerate(chunks):
            q_rows += [offset + min(t, n - 1) for t in range(q_len)]
            out_rows += [b * q_len + t for t in range(n)]
            offset += n
        q_index = torch.tensor(q_rows, dtype=torch.long, device=device)
        out_index = torch.tensor(out_rows, dtype=torch.long, device=device)
    return AttentionGroup(
        row_start=row_start,
        row_end=row_start + num_rows,
        q_len=q_len,
        num_seqs=num_seqs,
        block_tables=block_tables,
        mask=mask.to(device),
        q_index=q_index,
        out_index=out_index,
    )


def kv_rows(group: AttentionGroup, block_size: int, num_kv_heads: int, device) -> torch.Tensor:
    """Row ids [B * Hkv * S] into a `[slots * Hkv, D]` view of the cache, so one
    `index_select` gathers a group's keys straight into `[B, Hkv, S, D]` order."""
    tables = group.block_tables
    slots = (tables.unsqueeze(-1) * block_size + torch.arange(block_size)).view(
        tables.shape[0], 1, -1
    )  # [B, 1, S]
    heads = torch.arange(num_kv_heads).view(1, -1, 1)
    return (slots * num_kv_heads + heads).view(-1).to(device)


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, Hkv, D]
    meta: AttentionMetadata,
) -> torch.Tensor:  # [T, H * D]
    """The torch path: write the step's k/v into the cache, then attend every group."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    outs = [_group_attention(q[g.row_start : g.row_end], kv_cache, g) for g in meta.groups]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def attend(
    qkv: torch.Tensor,  # [T, (H + 2 Hkv) D], rotary applied, k/v already in the cache
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    kernels: CpuKernels,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    window: int | None,
) -> torch.Tensor:  # [T, H * D]
    """The C-kernel path: decodes straight from the cache blocks, chunks as in torch."""
    outs = []
    for g in meta.groups:
        # a decode step is one group of every row: no view of qkv for it
        whole = g.row_start == 0 and g.row_end == qkv.shape[0]
        rows = qkv if whole else qkv[g.row_start : g.row_end]
        if g.context_lens is not None:
            outs.append(
                kernels.decode_attention(
                    rows,
                    kv_cache,
                    g.block_tables,
                    g.context_lens,
                    num_heads,
                    num_kv_heads,
                    head_dim,
                    window,
                )
            )
        else:
            q = rows.view(rows.shape[0], -1, head_dim)[:, :num_heads]
            outs.append(_group_attention(q, kv_cache, g))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _group_attention(
    qg: torch.Tensor,  # [rows of the group, H, D]
    kv_cache: torch.Tensor,
    g: AttentionGroup,
) -> torch.Tensor:  # [rows, H * D]
    num_kv_heads, head_dim = kv_cache.shape[-2], kv_cache.shape[-1]
    num_heads = qg.shape[1]
    group_size = num_heads // num_kv_heads
    num_seqs = g.num_seqs
    k_rows, v_rows = kv_cache[0].view(-1, head_dim), kv_cache[1].view(-1, head_dim)
    # [B * Hkv * S, D] -> [B, Hkv, S, D], contiguous
    kg = k_rows.index_select(0, g.kv_rows).view(num_seqs, num_kv_heads, -1, head_dim)
    vg = v_rows.index_select(0, g.kv_rows).view(num_seqs, num_kv_heads, -1, head_dim)
    if g.q_len == 1:
        return _decode_attention(qg, kg, vg, g.mask)
    if g.q_index is not None:
        qg = qg.index_select(0, g.q_index)
    # [B, Q, Hkv, G, D] -> [B, Hkv, G * Q, D]
    qg = qg.reshape(num_seqs, g.q_len, num_kv_heads, group_size, head_dim)
    qg = qg.permute(0, 2, 3, 1, 4).reshape(num_seqs, num_kv_heads, -1, head_dim)
    og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=g.mask)
    # [B, Hkv, G * Q, D] -> [B * Q, H * D]
    og = og.view(num_seqs, num_kv_heads, group_size, g.q_len, head_dim)
    og = og.permute(0, 3, 1, 2, 4).reshape(num_seqs * g.q_len, num_heads * head_dim)
    if g.out_index is not None:
        og = og.index_select(0, g.out_index)
    return og


def _decode_attention(
    q: torch.Tensor,  # [B, H, D] (rows may be strided)
    k: torch.Tensor,  # [B, Hkv, S, D]
    v: torch.Tensor,  # [B, Hkv, S, D]
    mask: torch.Tensor,  # [B, 1, 1, S] float additive
) -> torch.Tensor:  # [B, H * D]
    # two small bmm beat SDPA's CPU kernel for one query row per sequence
    num_seqs, num_kv_heads, _, head_dim = k.shape
    q = q.reshape(num_seqs, num_kv_heads, -1, head_dim)  # [B, Hkv, G, D]
    scores = torch.matmul(q, k.transpose(-1, -2)).float()  # [B, Hkv, G, S]
    probs = scores.mul_(head_dim**-0.5).add_(mask).softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v).view(num_seqs, -1)  # [B, Hkv, G, D] -> [B, H * D]
