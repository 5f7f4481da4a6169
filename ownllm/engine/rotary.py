"""Rotary position embeddings for the Llama family: frequencies, tables and their application.

The scalings of the HF configs are read: default, linear, llama3 and yarn.
One `Rotary` per model computes the per-step tables; the engine's forward and
the trainer both rotate with `apply_rotary` (or the C kernel, from `table`).

Left out: dynamic NTK and longrope scaling.
"""

from __future__ import annotations

import math

import torch

from ownllm.engine.weights import ModelArgs, WeightsError


class Rotary:
    """The rotary frequencies of one model, on its device."""

    def __init__(self, args: ModelArgs, device: torch.device | str = "cpu") -> None:
        inv_freq, attention_factor = rope_inv_freq(args)
        self.inv_freq = inv_freq.to(device)  # [D / 2] float32
        self.attention_factor = attention_factor

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos, sin [T, 1, D] in `dtype` for `positions` [T]; sin's first half negated, the
        form `apply_rotary` takes."""
        cos, sin = self._halves(positions)
        cos = torch.cat([cos, cos], dim=-1).unsqueeze(1).to(dtype)
        sin = torch.cat([-sin, sin], dim=-1).unsqueeze(1).to(dtype)
        return cos, sin

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        """[T, D] float32, cos then sin of each position: the C kernel's rotary table."""
        return torch.cat(self._halves(positions), dim=-1).contiguous()

    def _halves(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32).unsqueeze(1) * self.inv_freq  # [T, D / 2]
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] rotated by the tables of `Rotary.cos_sin` (a new tensor)."""
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
        return _llama3(inv_freq, scaling, factor), 1.0
    if kind == "yarn":
        return _yarn(args, inv_freq, scaling, factor)
    raise WeightsError(f"rope scaling {kind!r} is not supported (default, linear, llama3, yarn)")


def _llama3(inv_freq: torch.Tensor, scaling: dict, factor: float) -> torch.Tensor:
    old_len = scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled).float()


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
