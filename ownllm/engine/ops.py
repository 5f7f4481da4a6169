"""The operations of the forward that exist twice: in torch, and over ownllm's C kernels.

`Ops` names them; `TorchOps` runs them with torch ops on any device,
`CKernelOps` with the C kernels of `cpu_kernels.py` on CPU. One of the two is
chosen once, when the model is built (`select_ops`), and the forward calls it
the same way whichever it is. Both compute the same thing; each gives the
same bits run after run.

The quantised linear layers (`quant_linear`, `dequantize`) take a `QuantWeight`:
the torch path dequantises it on every call (a reference, and what a GPU would
run; the engine serves dequantised weights instead, see `llm_engine.py`); the
C path multiplies steps of a few rows (below QUANT_GEMM_MIN_ROWS) in registers,
batches of more (up to QUANT_GEMM_MAX_ROWS) in its GEMM that dequantises W panel
by panel (`quant_gemm`), and larger prompt chunks through dequantised tiles and
the dense GEMM.

With `engine.quant_activations = int8`, both multiply q4_0 / q4_1 / q8_0 weights by x
rounded to int8 blocks of 32 (llama.cpp's scheme, `round_activations`): the C path in
integer dot products for decode-sized steps, and both by the rounded x, d q, elsewhere;
rows are rounded one by one, so a row's result does not depend on its batch.

Left out: a mixed choice per operation (the kernels come as one library).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ownllm.engine import cpu_kernels
from ownllm.engine.attention import AttentionMetadata, attend, paged_attention
from ownllm.engine.cpu_kernels import I8_TYPES, CpuKernels
from ownllm.engine.lora import LoraBatch, add_lora
from ownllm.engine.rotary import Rotary, apply_rotary
from ownllm.engine.weights import ModelArgs
from ownllm.formats.quant import QuantWeight, dequantize, round_activations

LORA_KERNEL_MAX_ROWS = 128  # above: the tiled bmm path (the C loop is per row, 2-3x slower
# than MKL's bmm on a 1024-row prefill step; at 64 decode rows it is 1.15x faster)
QUANT_KERNEL_MAX_ROWS = 16  # the decode kernel's rows at most (int8 activations: up to here)
# From these rows the batched kernel (quant_gemm) instead, which reads each weight once a call
# (bench/quant_layer.py's shapes, 2 threads, interleaved: bf16 0.82x the decode kernel's time at
# 4 rows, 0.43x at 16; fp32 1.16x at 4, 0.68x at 8; both lose at 2 rows)
QUANT_GEMM_MIN_ROWS = {torch.bfloat16: 4, torch.float32: 8}
QUANT_GEMM_MAX_ROWS = 512  # above: tiles and the GEMM. bench/quant_layer.py, bf16, 2 threads: a
# q4_1 layer 1.04-1.08x dense's time at 32-1024 rows (tiles 1.3-3.4x); the q8_0 head 1.09x at
# 512 rows (tiles 1.15x) but 1.30x at 1024 (tiles 1.18x), where x no longer stays in cache
QUANT_TILE_ELEMENTS = 1 << 21  # weights dequantised at once for a prompt chunk (4-8 MiB)


class Ops(Protocol):
    """What the forward needs beyond the linear layers, for one model's shapes and dtype."""

    fused_decode: bool  # attention metadata builds the decode group for the C kernel

    def describe(self) -> str:
        """How this computes, for the startup log: "torch", "C (AVX-512 decode attention)"…"""
        ...

    def rotary_table(self, rotary: Rotary, positions: torch.Tensor) -> torch.Tensor:
        """The step's rotary table for `positions` [T], in the layout `attention` takes."""
        ...

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """x += delta (in place, when given); returns RMSNorm(x) * weight."""
        ...

    def attention(
        self,
        qkv: torch.Tensor,  # [T, (H + 2 Hkv) D]
        rotary: torch.Tensor,  # from `rotary_table`
        kv_cache: torch.Tensor,  # [2, blocks, block_size, Hkv, D] of this layer
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H D]
        """Rotary on q and k, the step's k and v written to the cache, then paged attention."""
        ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up for gate_up [T, 2 I] (gate first): [T, I]."""
        ...

    def add_lora(
        self, out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, batch: LoraBatch
    ) -> None:
        """out += each row's adapter on x (see `lora.py`)."""
        ...

    def quant_linear(
        self, x: torch.Tensor, weight: QuantWeight, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """x W^T + b [T, out] for x [T, in] in the model's dtype, W quantised."""
        ...

    def dequantize(self, weight: QuantWeight) -> torch.Tensor:
        """W dense in the model's dtype (the embedding rows of a step)."""
        ...


class TorchOps:
    """The torch implementation: any device, any dtype."""

    fused_decode = False

    def __init__(
        self, args: ModelArgs, dtype: torch.dtype, note: str = "", int8_activations: bool = False
    ) -> None:
        self.num_heads, self.num_kv_heads = args.num_heads, args.num_kv_heads
        self.head_dim, self.dtype, self.note = args.head_dim, dtype, note
        self.int8_activations = int8_activations

    def describe(self) -> str:
        return f"torch ({self.note})" if self.note else "torch"

    def rotary_table(self, rotary: Rotary, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack(rotary.cos_sin(positions, self.dtype))  # [2, T, 1, D]: cos, sin

    def add_rms_norm(self, x, delta, weight, eps):
        if delta is not None:
            x.add_(delta)
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def attention(self, qkv, rotary, kv_cache, meta):
        num_heads, num_kv = self.num_heads, self.num_kv_heads
        heads = qkv.view(qkv.shape[0], num_heads + 2 * num_kv, self.head_dim)
        qk = apply_rotary(heads[:, : num_heads + num_kv], rotary[0], rotary[1])  # [T, H + Hkv, D]
        return paged_attention(
            qk[:, :num_heads], qk[:, num_heads:], heads[:, num_heads + num_kv :], kv_cache, meta
        )

    def silu_mul(self, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)

    def add_lora(self, out, x, a, b, batch):
        add_lora(out, x, a, b, batch)

    def quant_linear(self, x, weight, bias):
        if self.int8_activations and weight.qtype in I8_TYPES:
            x = rounded(x)
        return F.linear(x, self.dequantize(weight), bias)

    def dequantize(self, weight):
        return dequantize(weight, self.dtype)


def rounded(x: torch.Tensor) -> torch.Tensor:
    """x [T, K] rounded to int8 blocks and back, d q, in x's dtype (the int8 kernels' input)."""
    q, d = round_activations(x)
    blocks = q.view(*q.shape[:-1], -1, 32).float() * d.unsqueeze(-1)
    return blocks.view(q.shape).to(x.dtype)


class CKernelOps:
    """The C kernels (CPU, float32 or bfloat16); prompt-chunk attention and LoRA on many rows
    stay in torch, where MKL and SDPA are faster."""

    fused_decode = True

    def __init__(
        self, kernels: CpuKernels, args: ModelArgs, int8_activations: bool = False
    ) -> None:
        self.kernels = kernels
        self.int8_activations = int8_activations
        self.shape = (args.num_heads, args.num_kv_heads, args.head_dim)
        self.window = args.sliding_window

    def describe(self) -> str:
        num_heads, num_kv_heads, head_dim = self.shape
        return self.kernels.path(head_dim, num_heads // num_kv_heads)

    def rotary_table(self, rotary: Rotary, positions: torch.Tensor) -> torch.Tensor:
        return rotary.table(positions)  # [T, D] float32

    def add_rms_norm(self, x, delta, weight, eps):
        return self.kernels.add_rms_norm(x, delta, weight, eps)

    def attention(self, qkv, rotary, kv_cache, meta):
        self.kernels.rope_cache(qkv, rotary, meta.slot_mapping, kv_cache, *self.shape)
        return attend(qkv, kv_cache, meta, self.kernels, *self.shape, self.window)

    def silu_mul(self, gate_up):
        return self.kernels.silu_mul(gate_up)

    def add_lora(self, out, x, a, b, batch):
        if x.shape[0] <= LORA_KERNEL_MAX_ROWS:
            self.kernels.lora(out, x, a, b, batch.row_slots)
        else:
            add_lora(out, x, a, b, batch)

    def quant_linear(self, x, weight, bias):
        if x.stride(-1) != 1:
            x = x.contiguous()
        int8 = self.int8_activations and weight.qtype in I8_TYPES
        num_rows = x.shape[0]
        if (
            not int8
            and QUANT_GEMM_MIN_ROWS[x.dtype] <= num_rows <= QUANT_GEMM_MAX_ROWS
            and self.kernels.quant_gemm_takes(weight)
        ):
            out = self.kernels.quant_gemm(x, weight)
            return out if bias is None else out.add_(bias)
        if num_rows <= QUANT_KERNEL_MAX_ROWS:
            kernel = self.kernels.quant_matmul_i8 if int8 else self.kernels.quant_matmul
            out = kernel(x, weight)
            return out if bias is None else out.add_(bias)
        if int8:
            x = rounded(x)
        # a prompt chunk: dequantise W a tile of rows at a time, each through the GEMM
        rows = max(1, QUANT_TILE_ELEMENTS // weight.in_features)
        if rows >= weight.out_features:
            return F.linear(x, self.kernels.quant_dequantize(weight), bias)
        out = torch.empty(x.shape[0], weight.out_features, dtype=x.dtype)
        for start in range(0, weight.out_features, rows):
            stop = min(start + rows, weight.out_features)
            tile = self.kernels.quant_dequantize(weight.rows(slice(start, stop)))
            out[:, start:stop] = F.linear(x, tile, None if bias is None else bias[start:stop])
        return out

    def dequantize(self, weight):
        return self.kernels.quant_dequantize(weight)


def select_ops(
    args: ModelArgs,
    dtype: torch.dtype,
    device: torch.device,
    use_kernels: bool,
    int8_activations: bool = False,
) -> Ops:
    """The C kernels where asked for and they load (`cpu_kernels.load` logs why not), else
    torch; `int8_activations`: `engine.quant_activations = int8`."""
    if not use_kernels:
        return TorchOps(args, dtype, "engine.cpu_kernels = false", int8_activations)
    kernels = cpu_kernels.load(dtype, device, args.num_heads, args.num_kv_heads)
    if kernels is None:
        return TorchOps(args, dtype, int8_activations=int8_activations)
    return CKernelOps(kernels, args, int8_activations)
