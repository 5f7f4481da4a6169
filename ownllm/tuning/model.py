"""The training forward: the engine's Llama-family layer with trainable LoRA, over packed rows.

Sequences of a micro-batch are concatenated into one flat `[T, hidden]` batch
(padding-free packing): linear layers never see padding, rotary positions
restart at every sequence, and attention runs causally inside each sequence
(`cu_seqlens` boundaries). Base weights are frozen bf16 copies (q/k/v and
gate/up fused by the engine's loader, rotated by its rotary code), or, with
`LoraSettings.base_quantization`, frozen int8/q8_0/q4_1 matrices dequantised
per matmul (`ownllm.tuning.frozen`), so backward computes input gradients
only; LoRA A/B are fp32 parameters applied in the same form the engine serves
them: `y = x W + s · (x A) B`, one `x A` matmul per fused module for all of its
targets. Logits are computed only for the rows whose next token is trained,
which skips the lm_head for prompt tokens.

Left out: sliding-window attention (Mistral) and gradient checkpointing.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ownllm.engine.lora import TARGETS, module_path, module_shapes
from ownllm.engine.rotary import Rotary, apply_rotary
from ownllm.engine.weights import (
    LayerWeights,
    LlamaWeights,
    ModelArgs,
    cpu_has_native_bf16,
    fuse_weights,
    load_tensors,
    read_config,
)
from ownllm.formats.peft import tensor_key
from ownllm.tuning.frozen import QuantWeight, frozen_linear, load_quantized_base
from ownllm.tuning.hyperparams import LoraSettings


@dataclass
class Batch:
    """A packed micro-batch (built by `pack`)."""

    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long, restarting at 0 per sequence
    cu_seqlens: list[int]  # sequence boundaries in rows: [0, l0, l0 + l1, …, T]
    pred_rows: torch.Tensor  # [N] long: rows whose next token is trained
    targets: torch.Tensor  # [N] long: that next token


def pack(sequences: list[tuple[list[int], list[bool]]]) -> Batch:
    """Concatenate (input_ids, labels_mask) pairs into one padding-free batch."""
    ids, positions, cu, pred_rows, targets = [], [], [0], [], []
    for seq_ids, mask in sequences:
        start = len(ids)
        ids += seq_ids
        positions += range(len(seq_ids))
        cu.append(len(ids))
        for i in range(1, len(seq_ids)):
            if mask[i]:
                pred_rows.append(start + i - 1)
                targets.append(seq_ids[i])
    return Batch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        positions=torch.tensor(positions, dtype=torch.long),
        cu_seqlens=cu,
        pred_rows=torch.tensor(pred_rows, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
    )


class FusedLora(nn.Module):
    """LoRA for the targets of one fused base module: A [n·r, in] stacked, B per target."""

    def __init__(self, in_features: int, outs: list[int], parts: list[int], cfg: LoraSettings):
        super().__init__()
        self.outs, self.parts, self.r, self.scaling = outs, parts, cfg.r, cfg.scaling
        self.a = nn.Parameter(torch.empty(len(parts) * cfg.r, in_features))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(outs[p], cfg.r)) for p in parts)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def reset(self, generator: torch.Generator) -> None:
        # PEFT's default init: A kaiming-uniform(a=sqrt(5)) per target, B zero
        bound = 1.0 / math.sqrt(self.a.shape[1])
        with torch.no_grad():
            self.a.uniform_(-bound, bound, generator=generator)
            for b in self.b:
                b.zero_()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """s · (x A) B for every part of the fused output, zeros where a part has no target."""
        h = F.linear(self.dropout(x), self.a)  # [T, n r]
        pieces, k = [], 0
        for p, size in enumerate(self.outs):
            if k < len(self.parts) and self.parts[k] == p:
                pieces.append(F.linear(h[:, k * self.r : (k + 1) * self.r], self.b[k]))
                k += 1
            else:
                pieces.append(h.new_zeros(h.shape[0], size))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return out * self.scaling


class TrainableModel(nn.Module):
    """A frozen base (bf16, or quantised) plus LoRA parameters (the only ones with requires_grad).

    `tensors` are HF-named weights, or already fused `LlamaWeights` (a quantised base)."""

    def __init__(
        self,
        args: ModelArgs,
        tensors: dict[str, torch.Tensor] | LlamaWeights,
        cfg: LoraSettings,
        dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        self.args, self.cfg, self.dtype = args, cfg, dtype

        weights = (
            tensors if isinstance(tensors, LlamaWeights) else fuse_weights(args, tensors, dtype)
        )
        self.embed = weights.embed
        # norms in float32: the residual stream is float32
        self.base: list[LayerWeights] = [
            replace(
                w,
                input_norm=w.input_norm.float(),
                post_norm=w.post_norm.float(),
                q_norm=None if w.q_norm is None else w.q_norm.float(),
                k_norm=None if w.k_norm is None else w.k_norm.float(),
            )
            for w in weights.layers
        ]
        self.norm = weights.norm.float()
        self.lm_head = self.embed if weights.lm_head is None else weights.lm_head
        self.rotary = Rotary(args)
        shapes = module_shapes(args)
        self.lora = nn.ModuleList()
        for _ in range(args.num_layers):
            modules = nn.ModuleDict()
            for module, (in_features, outs) in shapes.items():
                parts = sorted(
                    part
                    for t, (m, part) in TARGETS.items()
                    if m == module and t in cfg.target_modules
                )
                if parts:
                    modules[module] = FusedLora(in_features, outs, parts, cfg)
            self.lora.append(modules)
        self.is_lora_enabled = True

    @contextmanager
    def adapters_disabled(self, disabled: bool = True):
        """The frozen base alone inside the block (DPO's reference model), LoRA again after."""
        before = self.is_lora_enabled
        self.is_lora_enabled = not disabled and before
        try:
            yield self
        finally:
            self.is_lora_enabled = before

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, cfg: LoraSettings, dtype: torch.dtype | None = None
    ) -> TrainableModel:
        """Load a HF model dir; dtype defaults to bf16 where the CPU has it natively. With
        `cfg.base_quantization`, each decoder matrix is quantised as it is read."""
        if dtype is None:
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        args = read_config(Path(model_dir))
        if cfg.base_quantization != "none":
            base = load_quantized_base(args, Path(model_dir), cfg.base_quantization, dtype)
            return cls(args, base, cfg, dtype)
        return cls(args, load_tensors(Path(model_dir)), cfg, dtype)

    def reset_lora(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for modules in self.lora:
            for lora in modules.values():
                lora.reset(generator)

    def _linear(self, x: torch.Tensor, i: int, module: str, bias=None) -> torch.Tensor:
        weight = getattr(self.base[i], module)
        if isinstance(weight, QuantWeight):
            out = frozen_linear(x, weight, bias)
        else:
            out = F.linear(x, weight, bias)
        lora = self.lora[i][module] if module in self.lora[i] else None  # noqa: SIM401
        return out if lora is None or not self.is_lora_enabled else out + lora.delta(x)

    def _attention(self, q, k, v, cu_seqlens: list[int]) -> torch.Tensor:
        outs = []
        for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:]):
            # [1, H, L, D]: causal inside this sequence only
            qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            outs.append(o[0].transpose(0, 1))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.reshape(out.shape[0], -1)  # [T, H D]

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """Final hidden states [T, hidden] (float32), bf16 compute inside."""
        a = self.args
        eps, nh, nkv, hd, hidden = (
            a.rms_norm_eps,
            a.num_heads,
            a.num_kv_heads,
            a.head_dim,
            a.hidden_size,
        )
        x = self.embed[batch.input_ids].float()  # [T, hidden] residual stream in fp32
        cos, sin = self.rotary.cos_sin(batch.positions, self.dtype)
        t = x.shape[0]
        for i, base in enumerate(self.base):
            h = F.rms_norm(x, (hidden,), base.input_norm, eps).to(self.dtype)
            qkv = self._linear(h, i, "qkv", base.qkv_bias).view(t, nh + 2 * nkv, hd)
            qk, v = qkv[:, : nh + nkv], qkv[:, nh + nkv :]
            if base.q_norm is not None:
                q = F.rms_norm(qk[:, :nh].float(), (hd,), base.q_norm, eps)
                k = F.rms_norm(qk[:, nh:].float(), (hd,), base.k_norm, eps)
                qk = torch.cat([q, k], dim=1).to(self.dtype)
            qk = apply_rotary(qk, cos, sin)
            attn = self._attention(qk[:, :nh], qk[:, nh:], v, batch.cu_seqlens)
            x = x + self._linear(attn, i, "o").float()
            h = F.rms_norm(x, (hidden,), base.post_norm, eps).to(self.dtype)
            gate, up = self._linear(h, i, "gate_up").chunk(2, dim=-1)
            x = x + self._linear(F.silu(gate) * up, i, "down").float()
        return x

    def logits(self, batch: Batch, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, V] float32 for `rows` (default: the rows whose next token is trained)."""
        rows = batch.pred_rows if rows is None else rows
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            x = self.hidden_states(batch).index_select(0, rows)
            x = F.rms_norm(x, (self.args.hidden_size,), self.norm, self.args.rms_norm_eps)
            return F.linear(x.to(self.dtype), self.lm_head).float()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of token losses, number of correct argmax predictions) over trained tokens."""
        logits = self.logits(batch)
        loss = F.cross_entropy(logits, batch.targets, reduction="sum")
        correct = int((logits.argmax(-1) == batch.targets).sum())
        return loss, correct

    # --- the adapter in PEFT form -------------------------------------------------------------

    def lora_state(self) -> dict[str, torch.Tensor]:
        """PEFT keys (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`) → fp32."""
        shapes = module_shapes(self.args)
        out: dict[str, torch.Tensor] = {}
        by_module = {m: [t for t, (mm, _) in TARGETS.items() if mm == m] for m in shapes}
        for i, modules in enumerate(self.lora):
            for module, lora in modules.items():
                names = [t for t in by_module[module] if TARGETS[t][1] in lora.parts]
                for k, name in enumerate(names):
                    a, b = lora.a[k * lora.r : (k + 1) * lora.r], lora.b[k]
                    out[tensor_key(module_path(i, name), "A")] = (
                        a.detach().float().contiguous().clone()
                    )
                    out[tensor_key(module_path(i, name), "B")] = (
                        b.detach().float().contiguous().clone()
                    )
        return out

    def load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load PEFT-keyed LoRA weights (same targets and rank) into the parameters."""
        shapes = module_shapes(self.args)
        by_module = {m: [t for t, (mm, _) in TARGETS.items() if mm == m] for m in shapes}
        with torch.no_grad():
            for i, modules in enumerate(self.lora):
                for module, lora in modules.items():
                    names = [t for t in by_module[module] if TARGETS[t][1] in lora.parts]
                    for k, name in enumerate(names):
                        a = state[tensor_key(module_path(i, name), "A")]
                        lora.a[k * lora.r : (k + 1) * lora.r].copy_(a)
                        lora.b[k].copy_(state[tensor_key(module_path(i, name), "B")])
