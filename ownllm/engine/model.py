"""A compact Llama-family forward over a flat batch of token rows.

One decoder layer: RMSNorm → fused qkv (+ bias for Qwen2, + q/k norm for
Qwen3) → rotary → paged attention → o → residual → RMSNorm → fused gate_up →
SiLU·up → down → residual. Rows of all sequences in the step are one flat
`[T, hidden]` batch: the linear layers never see padding; only attention
groups sequences (see `attention.py`). LoRA is added after each fused linear
for the rows that carry an adapter slot (see `lora.py`).

Rotary embeddings: default, linear, llama3 and yarn scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ownllm.engine.attention import AttentionMetadata, attend, paged_attention
from ownllm.engine.lora import LoraBatch, LoraStacks, add_lora
from ownllm.engine.weights import ModelArgs, WeightsError


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


@dataclass
class Layer:
    input_norm: torch.Tensor  # [hidden]
    qkv: Linear  # [(H + 2 Hkv) D, hidden] (+ bias for Qwen2)
    q_norm: torch.Tensor | None  # [D] (Qwen3)
    k_norm: torch.Tensor | None
    o: Linear  # [hidden, H D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Linear  # [2 I, hidden]
    down: Linear  # [hidden, I]


@dataclass
class StepInput:
    """Everything one forward needs, built once per step by the model runner."""

    input_ids: torch.Tensor  # [T] long
    cos: torch.Tensor | None  # [T, 1, D] (torch path)
    sin: torch.Tensor | None  # [T, 1, D], first half negated (see `_rope`)
    rope: torch.Tensor | None  # [T, D] float32 cos half, sin half (C kernel path)
    attention: AttentionMetadata
    lora: LoraBatch | None
    logits_rows: torch.Tensor  # [N] long: rows whose next-token logits are needed


class Model:
    def __init__(
        self,
        args: ModelArgs,
        tensors: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device,
        kernels=None,
    ) -> None:
        self.args, self.dtype, self.device = args, dtype, device
        self.kernels = kernels  # cpu_kernels.CpuKernels, or None for the torch path

        def take(name: str) -> torch.Tensor:
            if name not in tensors:
                raise WeightsError(f"weights lack {name}")
            return tensors.pop(name).to(device=device, dtype=dtype).contiguous()

        def cat(*names: str) -> torch.Tensor:
            return torch.cat([take(n) for n in names]).contiguous()

        def maybe(name: str) -> torch.Tensor | None:
            return take(name) if name in tensors else None

        self.embed = take("embed_tokens.weight")  # [V, hidden]
        self.layers = []
        for i in range(args.num_layers):
            p = f"layers.{i}."
            att = p + "self_attn."
            has_bias = att + "q_proj.bias" in tensors
            self.layers.append(
                Layer(
                    input_norm=take(p + "input_layernorm.weight"),
                    qkv=Linear(
                        cat(att + "q_proj.weight", att + "k_proj.weight", att + "v_proj.weight"),
                        cat(att + "q_proj.bias", att + "k_proj.bias", att + "v_proj.bias")
                        if has_bias
                        else None,
                    ),
                    q_norm=maybe(att + "q_norm.weight"),
                    k_norm=maybe(att + "k_norm.weight"),
                    o=Linear(take(att + "o_proj.weight")),
                    post_norm=take(p + "post_attention_layernorm.weight"),
                    gate_up=Linear(cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")),
                    down=Linear(take(p + "mlp.down_proj.weight")),
                )
            )
        self.norm = take("norm.weight")
        if "lm_head.weight" in tensors and not args.tie_word_embeddings:
            self.lm_head = Linear(take("lm_head.weight"))
        else:
            self.lm_head = Linear(self.embed)  # tied (packed separately in bf16 on CPU)
        inv_freq, attention_factor = rope_inv_freq(args)
        self.inv_freq = inv_freq.to(device)  # [D / 2] float32
        self.rope_factor = attention_factor

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, D] for `positions` [T]; sin's first half negated for `_rope`."""
        cos, sin = self._cos_sin(positions)
        cos = torch.cat([cos, cos], dim=-1).unsqueeze(1).to(self.dtype)
        sin = torch.cat([-sin, sin], dim=-1).unsqueeze(1).to(self.dtype)
        return cos, sin

    def rope_table(self, positions: torch.Tensor) -> torch.Tensor:
        """[T, D] float32, cos then sin of each position: the C kernel's rotary table."""
        return torch.cat(self._cos_sin(positions), dim=-1).contiguous()

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32).unsqueeze(1) * self.inv_freq  # [T, D / 2]
        return freqs.cos() * self.rope_factor, freqs.sin() * self.rope_factor

    @torch.inference_mode()
    def forward(
        self, step: StepInput, kv_caches: torch.Tensor, lora: LoraStacks | None
    ) -> torch.Tensor:
        """Logits [N, V] float32 for `step.logits_rows`; writes the step's KV into `kv_caches`."""
        args = self.args
        eps, num_heads, num_kv, head_dim = (
            args.rms_norm_eps,
            args.num_heads,
            args.num_kv_heads,
            args.head_dim,
        )
        shape, window = (num_heads, num_kv, head_dim), args.sliding_window
        x = self.embed.index_select(0, step.input_ids)  # [T, hidden]
        num_tokens = x.shape[0]
        on = lora.rank if lora is not None and step.lora is not None else {}
        lora_qkv, lora_o = on.get("qkv", 0) > 0, on.get("o", 0) > 0
        lora_gate_up, lora_down = on.get("gate_up", 0) > 0, on.get("down", 0) > 0
        kernels, residual = self.kernels, None
        for i, layer in enumerate(self.layers):
            h = _add_rms_norm(kernels, x, residual, layer.input_norm, eps)  # x += residual
            qkv = layer.qkv(h)  # [T, (H + 2 Hkv) D]
            if lora_qkv:
                _lora(kernels, qkv, h, lora.a[i]["qkv"], lora.b[i]["qkv"], step.lora)
            heads = qkv.view(num_tokens, num_heads + 2 * num_kv, head_dim)
            if layer.q_norm is not None:  # Qwen3, in place so the kernel path sees it
                heads[:, :num_heads] = F.rms_norm(
                    heads[:, :num_heads], (head_dim,), layer.q_norm, eps
                )
                heads[:, num_heads : num_heads + num_kv] = F.rms_norm(
                    heads[:, num_heads : num_heads + num_kv], (head_dim,), layer.k_norm, eps
                )
            if kernels is not None:
                kernels.rope_cache(
                    qkv, step.rope, step.attention.slot_mapping, kv_caches[i], *shape
                )
                attn = attend(qkv, kv_caches[i], step.attention, kernels, *shape, window)
            else:
                qk = _rope(heads[:, : num_heads + num_kv], step.cos, step.sin)  # [T, H + Hkv, D]
                attn = paged_attention(
                    qk[:, :num_heads],
                    qk[:, num_heads:],
                    heads[:, num_heads + num_kv :],
                    kv_caches[i],
                    step.attention,
                )  # [T, H D]
            o = layer.o(attn)
            if lora_o:
                _lora(kernels, o, attn, lora.a[i]["o"], lora.b[i]["o"], step.lora)
            h = _add_rms_norm(kernels, x, o, layer.post_norm, eps)  # x += o
            gate_up = layer.gate_up(h)  # [T, 2 I]
            if lora_gate_up:
                _lora(kernels, gate_up, h, lora.a[i]["gate_up"], lora.b[i]["gate_up"], step.lora)
            if kernels is not None:
                act = kernels.silu_mul(gate_up)  # [T, I]
            else:
                gate, up = gate_up.chunk(2, dim=-1)
                act = F.silu(gate).mul_(up)
            residual = layer.down(act)
            if lora_down:
                _lora(kernels, residual, act, lora.a[i]["down"], lora.b[i]["down"], step.lora)
        x.add_(residual)
        x = x.index_select(0, step.logits_rows)
        x = _add_rms_norm(kernels, x, None, self.norm, eps)
        return self.lm_head(x).float()  # [N, V]


LORA_KERNEL_MAX_ROWS = 128  # above: the tiled bmm path (the C loop is per row, 2-3x slower
# than MKL's bmm on a 1024-row prefill step; at 64 decode rows it is 1.15x faster)


def _lora(kernels, out, x, a, b, batch: LoraBatch) -> None:
    """out += each row's adapter on x (see `lora.py`)."""
    if kernels is not None and x.shape[0] <= LORA_KERNEL_MAX_ROWS:
        kernels.lora(out, x, a, b, batch.row_slots)
    else:
        add_lora(out, x, a, b, batch)


def _add_rms_norm(kernels, x: torch.Tensor, delta, weight: torch.Tensor, eps: float):
    """x += delta (in place, when given); returns RMSNorm(x) * weight."""
    if kernels is not None:
        return kernels.add_rms_norm(x, delta, weight, eps)
    if delta is not None:
        x.add_(delta)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # rotate_half(x) * sin == roll(x, D/2) * [-sin, sin]
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def rope_inv_freq(args: ModelArgs) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [D / 2] and the attention factor for the config's rope scaling."""
    dim, base = args.head_dim, args.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = args.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = float(scaling.get("factor", 1.0))
    if kind == "default":
        return inv_freq.float(), 1.0
    if kind == "linear":
        return (inv_freq / factor).float(), 1.0
    if kind == "llama3":
        old_len = scaling["original_max_position_embeddings"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(is_medium, smoothed, scaled).float(), 1.0
    if kind == "yarn":
        return _yarn(args, inv_freq, scaling, factor)
    raise WeightsError(f"rope scaling {kind!r} is not supported (default, linear, llama3, yarn)")


def _yarn(args: ModelArgs, inv_freq: torch.Tensor, scaling: dict, factor: float):
    dim, base = args.head_dim, args.rope_theta
    old_len = scaling.get("original_max_position_embeddings") or args.max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        if scaling.get("mscale") and scaling.get("mscale_all_dim"):
            attention_factor = mscale(factor, scaling["mscale"]) / mscale(
                factor, scaling["mscale_all_dim"]
            )
        else:
            attention_factor = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = correction_dim(scaling.get("beta_fast") or 32)
    high = correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    mixed = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation
    return mixed.float(), float(attention_factor)
