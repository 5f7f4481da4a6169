"""A compact Llama-family forward over a flat batch of token rows.

One decoder layer: RMSNorm → fused qkv (+ bias for Qwen2, + q/k norm for
Qwen3) → rotary → paged attention → o → residual → RMSNorm → fused gate_up →
SiLU·up → down → residual. Rows of all sequences in the step are one flat
`[T, hidden]` batch: the linear layers never see padding; only attention
groups sequences (see `attention.py`). LoRA is added after each fused linear
for the rows that carry an adapter slot (see `lora.py`).

The forward is one path: the operations with a C-kernel twin (norms, rotary
and attention, SiLU·up, LoRA) go through the `Ops` chosen when the model is
built (see `ops.py`); rotary scaling is in `rotary.py`, weight fusing in
`weights.py`.

With `model.quantization`, the linear layers (and the embedding) hold
`QuantWeight`s (`QuantLinear`): the ops multiply by them without a dense copy
(C kernels on CPU, see `ops.py`); LoRA adds its bf16/fp32 delta on top as for
dense weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ownllm.engine.attention import AttentionMetadata
from ownllm.engine.lora import LoraBatch, LoraStacks
from ownllm.engine.ops import Ops
from ownllm.engine.rotary import Rotary
from ownllm.engine.weights import LayerWeights, ModelArgs, fuse_weights
from ownllm.formats.quant import QuantWeight


class Linear:
    """y = x W^T + b. On CPU (bfloat16 or float32), W is prepacked once for oneDNN: in
    bfloat16 it reads it about twice as fast as `F.linear` when decoding a few rows, in
    float32 about 1.3x (one row or 64, measured on the 2-core dev box)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias, self.packed = weight, bias, None
        self.out_features, self.in_features = weight.shape
        if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float32):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                self.weight = None  # the packed copy replaces it
            except (AttributeError, RuntimeError):  # a torch build without oneDNN
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class QuantLinear:
    """y = x W^T + b with W a QuantWeight, multiplied by `ops.quant_linear` (no dense copy)."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None, ops: Ops) -> None:
        self.weight, self.bias, self.ops = weight, bias, ops
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.quant_linear(x, self.weight, self.bias)


def linear(
    weight: torch.Tensor | QuantWeight, ops: Ops, bias: torch.Tensor | None = None
) -> Linear | QuantLinear:
    if isinstance(weight, QuantWeight):
        return QuantLinear(weight, bias, ops)
    return Linear(weight, bias)


@dataclass
class Layer:
    input_norm: torch.Tensor  # [hidden]
    qkv: Linear | QuantLinear  # [(H + 2 Hkv) D, hidden] (+ bias for Qwen2)
    q_norm: torch.Tensor | None  # [D] (Qwen3)
    k_norm: torch.Tensor | None
    o: Linear | QuantLinear  # [hidden, H D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Linear | QuantLinear  # [2 I, hidden]
    down: Linear | QuantLinear  # [hidden, I]

    @classmethod
    def from_weights(cls, w: LayerWeights, ops: Ops) -> Layer:
        return cls(
            input_norm=w.input_norm,
            qkv=linear(w.qkv, ops, w.qkv_bias),
            q_norm=w.q_norm,
            k_norm=w.k_norm,
            o=linear(w.o, ops),
            post_norm=w.post_norm,
            gate_up=linear(w.gate_up, ops),
            down=linear(w.down, ops),
        )


@dataclass
class StepInput:
    """Everything one forward needs, built once per step by the model runner."""

    input_ids: torch.Tensor  # [T] long
    rotary: torch.Tensor  # the step's rotary table, in the layout of the model's ops
    attention: AttentionMetadata
    lora: LoraBatch | None
    logits_rows: torch.Tensor  # [N] long: rows whose next-token logits are needed


class Model:
    def __init__(
        self,
        args: ModelArgs,
        tensors: dict[str, torch.Tensor | QuantWeight],
        dtype: torch.dtype,
        device: torch.device,
        ops: Ops,
    ) -> None:
        self.args, self.dtype, self.device, self.ops = args, dtype, device, ops
        weights = fuse_weights(args, tensors, dtype, device)
        self.embed = weights.embed  # [V, hidden]
        self.layers = [Layer.from_weights(w, ops) for w in weights.layers]
        self.norm = weights.norm
        # tied: packed separately in bf16 on CPU; quantised: the embedding's own blocks
        self.lm_head = linear(self.embed if weights.lm_head is None else weights.lm_head, ops)
        self.rotary = Rotary(args, device)

    def rotary_table(self, positions: torch.Tensor) -> torch.Tensor:
        """The rotary table of `positions` [T] that this model's ops take."""
        return self.ops.rotary_table(self.rotary, positions)

    @torch.inference_mode()
    def forward(
        self, step: StepInput, kv_caches: torch.Tensor, lora: LoraStacks | None
    ) -> torch.Tensor:
        """Logits [N, V] float32 for `step.logits_rows`; writes the step's KV into `kv_caches`."""
        ops, eps = self.ops, self.args.rms_norm_eps
        if isinstance(self.embed, QuantWeight):
            x = ops.dequantize(self.embed.rows(step.input_ids))  # [T, hidden]
        else:
            x = self.embed.index_select(0, step.input_ids)  # [T, hidden]
        ranks = lora.rank if lora is not None and step.lora is not None else {}
        adapted = {module for module, rank in ranks.items() if rank > 0}

        def add_lora(i: int, module: str, out: torch.Tensor, x: torch.Tensor) -> None:
            if module in adapted:
                ops.add_lora(out, x, lora.a[i][module], lora.b[i][module], step.lora)

        residual = None
        for i, layer in enumerate(self.layers):
            h = ops.add_rms_norm(x, residual, layer.input_norm, eps)  # x += residual
            qkv = layer.qkv(h)  # [T, (H + 2 Hkv) D]
            add_lora(i, "qkv", qkv, h)
            if layer.q_norm is not None:
                self._qk_norm(qkv, layer)
            attn = ops.attention(qkv, step.rotary, kv_caches[i], step.attention)  # [T, H D]
            o = layer.o(attn)
            add_lora(i, "o", o, attn)
            h = ops.add_rms_norm(x, o, layer.post_norm, eps)  # x += o
            gate_up = layer.gate_up(h)  # [T, 2 I]
            add_lora(i, "gate_up", gate_up, h)
            act = ops.silu_mul(gate_up)  # [T, I]
            residual = layer.down(act)
            add_lora(i, "down", residual, act)
        x.add_(residual)
        x = x.index_select(0, step.logits_rows)
        x = ops.add_rms_norm(x, None, self.norm, eps)
        return self.lm_head(x).float()  # [N, V]

    def _qk_norm(self, qkv: torch.Tensor, layer: Layer) -> None:
        """Qwen3's RMSNorm of each q and k head, in place (the ops rotate qkv after it)."""
        args = self.args
        num_heads, num_kv, head_dim, eps = (
            args.num_heads,
            args.num_kv_heads,
            args.head_dim,
            args.rms_norm_eps,
        )
        heads = qkv.view(qkv.shape[0], num_heads + 2 * num_kv, head_dim)
        heads[:, :num_heads] = F.rms_norm(heads[:, :num_heads], (head_dim,), layer.q_norm, eps)
        heads[:, num_heads : num_heads + num_kv] = F.rms_norm(
            heads[:, num_heads : num_heads + num_kv], (head_dim,), layer.k_norm, eps
        )
