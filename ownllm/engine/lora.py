"""Multi-LoRA: PEFT adapters in host memory, resident slot weights, one batched forward path.

Adapters are read and validated by `ownllm.formats.peft`; here each module is
placed on its (layer, target) and checked against the model's shapes.

Every token row of a step carries the slot of its adapter set (-1: the base
model). Per fused base module (qkv, o, gate_up, down) the resident slots are
stacked: `A [num_slots, in, R]` and `B [num_slots, R, out]`, zero-padded to
the widest slot R. A slot packs each of its adapters' targets side by side
along R, with `weight * scaling` folded into B, so

    y = x W + sum_i w_i s_i (x A_i) B_i

is two batched matmuls whatever the ranks, targets and number of stacked
adapters (the `cat` composition). Rows are grouped by slot into tiles of
equal size; one gather, two `bmm` and one `index_add_` per module apply every
adapter of the batch at once.

Left out: DoRA, LoRA on embeddings or lm_head, adapter bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ownllm.engine.weights import ModelArgs
from ownllm.errors import InvalidRequestError
from ownllm.formats.peft import SUPPORTED_TARGETS, AdapterFormatError, read_adapter

MODULES = ("qkv", "o", "gate_up", "down")
# PEFT target -> (fused module, part index), in SUPPORTED_TARGETS order
_PARTS = (("qkv", 0), ("qkv", 1), ("qkv", 2), ("o", 0), ("gate_up", 0), ("gate_up", 1), ("down", 0))
TARGETS = dict(zip(SUPPORTED_TARGETS, _PARTS, strict=True))
_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
_MODULE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)$")


def module_path(layer: int, target: str) -> str:
    """The base model's module a target of `layer` is (`model.layers.0.self_attn.q_proj`)."""
    group = "mlp" if target in _MLP_TARGETS else "self_attn"
    return f"model.layers.{layer}.{group}.{target}"


def module_shapes(args: ModelArgs) -> dict[str, tuple[int, list[int]]]:
    """Fused module -> (in features, out features of each part)."""
    q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
    inter, hidden = args.intermediate_size, args.hidden_size
    return {
        "qkv": (hidden, [q, kv, kv]),
        "o": (q, [hidden]),
        "gate_up": (hidden, [inter, inter]),
        "down": (inter, [hidden]),
    }


@dataclass
class LoraAdapter:
    """One PEFT adapter in host memory: per (layer, target) A [r, in], B [out, r], scaling."""

    adapter_id: str
    rank: int
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]

    @classmethod
    def from_dir(cls, adapter_id: str, path: str | Path, args: ModelArgs, max_rank: int):
        """Read the PEFT adapter at `path` and place it on this model's layers."""
        try:
            adapter = read_adapter(path, max_rank)
        except AdapterFormatError as e:
            raise AdapterFormatError(
                f"adapter {adapter_id!r}: {e.message}", param=e.param
            ) from None
        shapes = module_shapes(args)
        weights, rank = {}, 0
        for module, (a, b) in adapter.modules.items():
            m = _MODULE.search(module)
            if m is None or m[2] not in TARGETS or int(m[1]) >= args.num_layers:
                raise InvalidRequestError(
                    f"adapter {adapter_id!r}: unsupported module {module} (only LoRA A/B of "
                    f"{', '.join(TARGETS)} in this model's {args.num_layers} layers)"
                )
            layer, target = int(m[1]), m[2]
            fused, part = TARGETS[target]
            in_features, outs = shapes[fused]
            r = a.shape[0]
            if a.shape != (r, in_features) or b.shape != (outs[part], r):
                raise InvalidRequestError(
                    f"adapter {adapter_id!r} does not fit this base model "
                    f"({target} A {tuple(a.shape)}, B {tuple(b.shape)})"
                )
            weights[(layer, target)] = (a.float(), b.float(), adapter.scaling(module))
            rank = max(rank, r)
        return cls(adapter_id, rank, weights)


class LoraStacks:
    """The resident slots' weights, per layer and fused module (see module docstring)."""

    def __init__(self, args: ModelArgs, num_slots: int, dtype: torch.dtype, device) -> None:
        self.args, self.num_slots, self.dtype, self.device = args, num_slots, dtype, device
        self.shapes = module_shapes(args)
        self.rank: dict[str, int] = {}
        self.a: list[dict[str, torch.Tensor]] = [{} for _ in range(args.num_layers)]
        self.b: list[dict[str, torch.Tensor]] = [{} for _ in range(args.num_layers)]
        for module in MODULES:
            self._resize(module, 0)  # grown when a slot needs it; rank 0 modules are skipped

    def _resize(self, module: str, rank: int) -> None:
        in_features, outs = self.shapes[module]
        old = self.rank.get(module, 0)
        for layer in range(self.args.num_layers):
            a = torch.zeros(self.num_slots, in_features, rank, dtype=self.dtype, device=self.device)
            b = torch.zeros(self.num_slots, rank, sum(outs), dtype=self.dtype, device=self.device)
            if old:
                a[:, :, :old] = self.a[layer][module]
                b[:, :old] = self.b[layer][module]
            self.a[layer][module], self.b[layer][module] = a, b
        self.rank[module] = rank

    def load_slot(self, slot: int, parts: list[tuple[LoraAdapter, float]]) -> None:
        """Pack the weighted adapters `parts` (the cat composition) into `slot`."""
        # ranks add up over stacked adapters (cat): grow the stacks when a slot needs more
        for module in MODULES:
            total = self._slot_rank(parts, module)
            if total > self.rank[module]:
                self._resize(module, total)
        for layer in range(self.args.num_layers):
            for module in MODULES:
                a_stack, b_stack = self.a[layer][module], self.b[layer][module]
                a_stack[slot].zero_()
                b_stack[slot].zero_()
                _, outs = self.shapes[module]
                col = 0
                for adapter, weight in parts:
                    for target, (mod, part) in TARGETS.items():
                        entry = adapter.weights.get((layer, target))
                        if mod != module or entry is None:
                            continue
                        a, b, scaling = entry
                        r, out_start = a.shape[0], sum(outs[:part])
                        a_stack[slot, :, col : col + r] = a.t()
                        b_stack[slot, col : col + r, out_start : out_start + b.shape[0]] = b.t() * (
                            weight * scaling
                        )
                        col += r

    def _slot_rank(self, parts: list[tuple[LoraAdapter, float]], module: str) -> int:
        best = 0
        for layer in range(self.args.num_layers):
            total = 0
            for adapter, _ in parts:
                for target, (mod, _) in TARGETS.items():
                    entry = adapter.weights.get((layer, target))
                    if mod == module and entry is not None:
                        total += entry[0].shape[0]
            best = max(best, total)
        return best


@dataclass
class LoraBatch:
    """Which rows of a step use which slot, as equal-size tiles (built once per step)."""

    rows: torch.Tensor  # [num_tiles * tile_size] long: token row of each tile position
    row_mask: torch.Tensor  # [num_tiles, tile_size, 1] model dtype: 0 on padding
    tile_slots: torch.Tensor | None  # [num_tiles] long; None: tile i is slot i
    num_tiles: int
    tile_size: int
    row_start: int | None = None  # set when the tiles are rows row_start.. in order, unpadded
    row_slots: torch.Tensor | None = None  # [T] int32 slot per row, -1: base (the C kernel)


def build_lora_batch(row_slots: list[int], num_slots: int, dtype, device) -> LoraBatch | None:
    """Tiles for the rows whose slot is not -1; None when every row is the base model."""
    by_slot: dict[int, list[int]] = {}
    for row, slot in enumerate(row_slots):
        if slot >= 0:
            by_slot.setdefault(slot, []).append(row)
    if not by_slot:
        return None
    num_rows = sum(len(r) for r in by_slot.values())
    largest = max(len(r) for r in by_slot.values())
    if num_slots * largest <= 2 * num_rows:
        # every slot one tile, in slot order: the stacks are used as they are, no gather
        tile_size, tiles = largest, [(s, by_slot.get(s, [])) for s in range(num_slots)]
    else:
        tile_size = -(-num_rows // len(by_slot))
        tiles = [
            (slot, rows[i : i + tile_size])
            for slot, rows in sorted(by_slot.items())
            for i in range(0, len(rows), tile_size)
        ]
    flat_rows, mask = [], []
    for _, rows in tiles:
        pad = tile_size - len(rows)
        flat_rows += rows + [rows[0] if rows else 0] * pad
        mask += [1.0] * len(rows) + [0.0] * pad
    full_stack = len(tiles) == num_slots and all(s == i for i, (s, _) in enumerate(tiles))
    # rows sorted by slot with equal counts (the runner sorts decodes by slot): plain slices
    is_slice = flat_rows == list(range(flat_rows[0], flat_rows[0] + len(flat_rows)))
    return LoraBatch(
        rows=torch.tensor(flat_rows, dtype=torch.long, device=device),
        row_mask=torch.tensor(mask, dtype=dtype, device=device).view(len(tiles), tile_size, 1),
        tile_slots=None
        if full_stack
        else torch.tensor([s for s, _ in tiles], dtype=torch.long, device=device),
        num_tiles=len(tiles),
        tile_size=tile_size,
        row_start=flat_rows[0] if is_slice and all(mask) else None,
        row_slots=torch.tensor(row_slots, dtype=torch.int32, device=device),
    )


def add_lora(
    out: torch.Tensor,  # [T, out] base projection, updated in place
    x: torch.Tensor,  # [T, in]
    a: torch.Tensor,  # [num_slots, in, R]
    b: torch.Tensor,  # [num_slots, R, out]
    batch: LoraBatch,
) -> torch.Tensor:
    if batch.tile_slots is not None:
        a, b = a.index_select(0, batch.tile_slots), b.index_select(0, batch.tile_slots)
    if batch.row_start is not None:  # no gather, no scatter: bmm on views of x and out
        rows = slice(batch.row_start, batch.row_start + batch.num_tiles * batch.tile_size)
        xs = x[rows].reshape(batch.num_tiles, batch.tile_size, -1)  # [N, C, in]
        out[rows].view(batch.num_tiles, batch.tile_size, -1).baddbmm_(torch.bmm(xs, a), b)
        return out
    xs = x.index_select(0, batch.rows).view(batch.num_tiles, batch.tile_size, -1)  # [N, C, in]
    h = torch.bmm(xs, a).mul_(batch.row_mask)  # [N, C, R]
    y = torch.bmm(h, b)  # [N, C, out]
    return out.index_add_(0, batch.rows, y.view(-1, y.shape[-1]))
