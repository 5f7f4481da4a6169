"""A quantised frozen base for LoRA training (QLoRA-style): weights stored in 4 or 8 bits,
dequantised for each matmul and dropped after it.

`load_quantized_base` reads a model directory tensor by tensor and builds the engine's
fused layer weights (q/k/v and gate/up concatenated, by `ownllm.engine.weights`'s one
layout, `assemble_weights`), each fused matrix a `QuantWeight` (`ownllm.formats.quant`)
as soon as it exists, so no full-precision copy of the decoder is ever resident. A model
cache built from a GGUF file holds the file's own blocks (quant.blocks): where they are of
the requested type they are used as they are, otherwise the dense weights are quantised.
`frozen_linear` is `x Wᵀ` through a custom autograd function: forward dequantises W into
the compute dtype, backward dequantises it again for the input gradient (`grad · W`);
nothing but the quantised form outlives the call, and the frozen weight gets no gradient.

The embedding (and the tied output head) and the norms stay in the compute dtype, as in
QLoRA; the adapter is trained in fp32.

Left out: double quantisation of the scales, NF4, paged optimizers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ownllm.engine.weights import (
    LlamaWeights,
    ModelArgs,
    WeightsError,
    assemble_weights,
    safetensors_files,
)
from ownllm.formats.quant import (
    QUANT_FILE,
    QuantError,
    QuantWeight,
    cat_rows,
    dequantize,
    load_quant_file,
    quantize,
)


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
        ctx.weight = weight
        return F.linear(x, dequantize(weight, x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ dequantize(ctx.weight, grad.dtype), None


def frozen_linear(
    x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x Wᵀ (+ b) with W dequantised for this call only; gradients flow to x alone."""
    out = _FrozenLinear.apply(x, weight)
    return out if bias is None else out + bias


class _LazyTensors:
    """The safetensors of a model directory, each read when taken (keys without `model.`)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in safetensors_files(model_dir)]
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

    def drop(self, name: str) -> None:
        """Forget `name` unread (its quantised form comes from elsewhere)."""
        self._where.pop(name, None)


def load_quantized_base(
    args: ModelArgs, model_dir: Path, kind: str, dtype: torch.dtype
) -> LlamaWeights:
    """The model's fused weights with every decoder matrix in `kind` (int8, q8_0, q4_0, q4_1)
    as it is read: the GGUF file's own blocks where the cache holds them in `kind`."""
    tensors = _LazyTensors(model_dir)
    own = Path(model_dir) / QUANT_FILE
    blocks = load_quant_file(own) if own.is_file() else {}

    def plain(*names: str) -> torch.Tensor:
        if len(names) > 1:
            return torch.cat([plain(n) for n in names])
        return tensors.take(names[0]).to(dtype).contiguous()

    def fused(*names: str) -> QuantWeight:
        keys = [f"model.{n}" for n in names]
        if all(k in blocks and blocks[k].qtype == kind for k in keys):
            for n in names:
                tensors.drop(n)
            return cat_rows([blocks.pop(k) for k in keys])
        try:
            return quantize(torch.cat([tensors.take(n).float() for n in names]), kind)
        except QuantError as e:
            raise WeightsError(f"cannot train on a {kind} base: {e}") from None

    return assemble_weights(args, plain, fused, tensors.__contains__)
