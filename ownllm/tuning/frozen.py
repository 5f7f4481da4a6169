"""A quantised frozen base for LoRA training (QLoRA-style): weights stored in 4 or 8 bits,
dequantised for each matmul and dropped after it.

`load_quantized_base` reads a model directory tensor by tensor and builds the engine's
fused layer weights (q/k/v and gate/up concatenated, as `ownllm.engine.weights.fuse_weights`
does), quantising every fused matrix as soon as it exists, so no full-precision copy of the
decoder is ever resident. `frozen_linear` is `x Wᵀ` through a custom autograd function:
forward dequantises W into the compute dtype, backward dequantises it again for the input
gradient (`grad · W`); nothing but the quantised form outlives the call. The frozen weight
gets no gradient.

Types: `int8` (symmetric per output channel, fp32 scales), `q8_0` (blocks of 32, one fp16
scale each), `q4_1` (blocks of 32 with an fp16 scale and minimum, GGUF's layout of nibbles:
low nibbles hold elements 0-15 of a block, high nibbles 16-31). The embedding (and the tied
output head) and the norms stay in the compute dtype, as in QLoRA.

Left out: double quantisation of the scales, NF4, paged optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ownllm.engine.weights import LayerWeights, LlamaWeights, ModelArgs, WeightsError
from ownllm.tuning.hyperparams import BASE_QUANTIZATIONS

BLOCK = 32


@dataclass
class QuantizedWeight:
    """A frozen [out, in] matrix in `kind`: `data` holds the codes, `scale`/`offset` the blocks'."""

    kind: str
    shape: tuple[int, int]
    data: torch.Tensor  # int8 [out, in] (int8, q8_0) | uint8 [out, in / 2] (q4_1)
    scale: torch.Tensor  # fp32 [out, 1] (int8) | fp16 [out, in / 32] (q8_0, q4_1)
    offset: torch.Tensor | None = None  # fp16 [out, in / 32] (q4_1: the block minimum)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.offset is None else self.offset.nbytes
        return self.data.nbytes + self.scale.nbytes + extra

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The matrix [out, in] in `dtype` (computed in fp32, rounded once)."""
        out, n = self.shape
        if self.kind == "int8":
            return (self.data.float() * self.scale).to(dtype)
        if self.kind == "q8_0":
            codes = self.data.view(out, n // BLOCK, BLOCK).float()
            return (codes * self.scale.float().unsqueeze(-1)).view(out, n).to(dtype)
        packed = self.data.view(out, n // BLOCK, BLOCK // 2)
        codes = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float()  # [out, blocks, 32]
        w = codes * self.scale.float().unsqueeze(-1) + self.offset.float().unsqueeze(-1)
        return w.view(out, n).to(dtype)


def quantize(w: torch.Tensor, kind: str) -> QuantizedWeight:
    """`w` [out, in] in `kind`; block types need `in` to be a multiple of 32."""
    w = w.detach().float()
    out, n = w.shape
    if kind == "int8":
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        codes = torch.where(scale > 0, w / scale, 0.0).round().clamp(-127, 127)
        return QuantizedWeight(kind, (out, n), codes.to(torch.int8).contiguous(), scale)
    if kind not in ("q8_0", "q4_1"):
        raise WeightsError(f"base quantization {kind!r}: use {', '.join(BASE_QUANTIZATIONS)}")
    if n % BLOCK:
        raise WeightsError(f"{kind} needs rows that are a multiple of {BLOCK} long, not {n}")
    blocks = w.view(out, n // BLOCK, BLOCK)
    if kind == "q8_0":
        d = (blocks.abs().amax(dim=-1) / 127).half()
        inv = torch.where(d.float() > 0, 1 / d.float(), 0.0).unsqueeze(-1)
        codes = (blocks * inv).round().clamp(-127, 127).to(torch.int8)
        return QuantizedWeight(kind, (out, n), codes.view(out, n).contiguous(), d)
    lo, hi = blocks.amin(dim=-1), blocks.amax(dim=-1)
    d = ((hi - lo) / 15).half()
    m = lo.half()
    inv = torch.where(d.float() > 0, 1 / d.float(), 0.0).unsqueeze(-1)
    codes = ((blocks - m.float().unsqueeze(-1)) * inv + 0.5).floor().clamp(0, 15).to(torch.uint8)
    packed = codes[..., : BLOCK // 2] | (codes[..., BLOCK // 2 :] << 4)
    return QuantizedWeight(kind, (out, n), packed.reshape(out, n // 2).contiguous(), d, m)


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
        ctx.weight = weight
        return F.linear(x, weight.dequantize(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.weight.dequantize(grad.dtype), None


def frozen_linear(
    x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x Wᵀ (+ b) with W dequantised for this call only; gradients flow to x alone."""
    out = _FrozenLinear.apply(x, weight)
    return out if bias is None else out + bias


class _LazyTensors:
    """The safetensors of a model directory, each read when taken (keys without `model.`)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise WeightsError(f"{model_dir} has no *.safetensors files")
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {
            key.removeprefix("model."): (h, key)
            for h in self._handles
            for key in h.keys()  # noqa: SIM118 (safe_open is not a dict)
        }

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def take(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise WeightsError(f"weights lack {name}")
        handle, key = self._where.pop(name)
        return handle.get_tensor(key)


def load_quantized_base(
    args: ModelArgs, model_dir: Path, kind: str, dtype: torch.dtype
) -> LlamaWeights:
    """The model's fused weights with every decoder matrix quantised to `kind` as it is read."""
    tensors = _LazyTensors(model_dir)

    def plain(name: str) -> torch.Tensor:
        return tensors.take(name).to(dtype).contiguous()

    def fused(*names: str) -> QuantizedWeight:
        return quantize(torch.cat([tensors.take(n).float() for n in names]), kind)

    def maybe(name: str) -> torch.Tensor | None:
        return plain(name) if name in tensors else None

    embed, layers = plain("embed_tokens.weight"), []
    for i in range(args.num_layers):
        p, att = f"layers.{i}.", f"layers.{i}.self_attn."
        bias = (att + "q_proj.bias", att + "k_proj.bias", att + "v_proj.bias")
        layers.append(
            LayerWeights(
                input_norm=plain(p + "input_layernorm.weight"),
                qkv=fused(att + "q_proj.weight", att + "k_proj.weight", att + "v_proj.weight"),
                qkv_bias=torch.cat([plain(b) for b in bias]) if bias[0] in tensors else None,
                q_norm=maybe(att + "q_norm.weight"),
                k_norm=maybe(att + "k_norm.weight"),
                o=fused(att + "o_proj.weight"),
                post_norm=plain(p + "post_attention_layernorm.weight"),
                gate_up=fused(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=fused(p + "mlp.down_proj.weight"),
            )
        )
    norm = plain("norm.weight")
    tied = args.tie_word_embeddings or "lm_head.weight" not in tensors
    return LlamaWeights(embed, norm, None if tied else plain("lm_head.weight"), layers)
