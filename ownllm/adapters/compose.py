"""Compose LoRA adapters into a new one: cat, linear, ties, dare_linear, dare_ties.

The methods follow PEFT's `add_weighted_adapter` (and LoRAX), so a composition
made here matches one made there:

- `cat`: exact. Per module, A stacks `weight_i * scaling_i * A_i` and B stacks
  `B_i` along the rank, so `B A = sum_i weight_i * scaling_i * B_i A_i`. Every
  module gets the summed rank R (zero-padded where an input lacks the module)
  and alpha = R, i.e. scaling 1. This is also what request-time stacking computes.
- `linear`, `ties`, `dare_linear`, `dare_ties`: merge A and B separately, each
  input scaled by sqrt(|weight * scaling|) (the sign goes on A); need equal
  ranks. `ties` keeps the top `density` fraction of each tensor by magnitude,
  elects a sign per entry and averages the agreeing entries; `dare_*` drops
  entries at random (rate 1 - density, rescaled by 1/density) with a
  `torch.Generator` seeded by `seed`, so a composition is reproducible.

Left out: the SVD family (`svd`, `ties_svd`, …) and `magnitude_prune`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ownllm.errors import InvalidRequestError
from ownllm.formats.peft import PeftAdapter, lora_config

if TYPE_CHECKING:
    import torch

METHODS = ("cat", "linear", "ties", "dare_linear", "dare_ties")
EQUAL_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties")
NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties")
MAX_INPUTS = 16


@dataclass(frozen=True)
class ComposeSpec:
    """How to compose: the method and its knobs (stored as the new adapter's hyperparameters)."""

    method: str
    weights: tuple[float, ...]
    density: float | None = None
    seed: int = 0
    majority_sign_method: str = "total"

    def validate(self, num_inputs: int) -> None:
        if self.method not in METHODS:
            raise InvalidRequestError(
                f"unknown composition method {self.method!r}; use one of {', '.join(METHODS)}",
                param="method",
            )
        if not 1 <= num_inputs <= MAX_INPUTS:
            raise InvalidRequestError(
                f"compose takes 1 to {MAX_INPUTS} adapters, got {num_inputs}", param="adapters"
            )
        if len(self.weights) != num_inputs:
            raise InvalidRequestError(
                f"{len(self.weights)} weights for {num_inputs} adapters", param="weights"
            )
        for i, w in enumerate(self.weights):
            if not math.isfinite(w):
                raise InvalidRequestError(
                    f"weight {w} is not finite", param=f"adapters[{i}].weight"
                )
        density_ok = self.density is not None and 0.0 < self.density <= 1.0
        if self.method in NEEDS_DENSITY and not density_ok:
            raise InvalidRequestError(
                f"method {self.method} needs a density in (0, 1], got {self.density}",
                param="density",
            )
        if self.majority_sign_method not in ("total", "frequency"):
            raise InvalidRequestError(
                "majority_sign_method must be total or frequency", param="majority_sign_method"
            )

    def to_dict(self) -> dict:
        out = {"method": self.method, "weights": list(self.weights)}
        if self.method in NEEDS_DENSITY:
            out["density"] = self.density
        if self.method.startswith("dare"):
            out["seed"] = self.seed
        if self.method.endswith("ties"):
            out["majority_sign_method"] = self.majority_sign_method
        return out


def compose(
    adapters: Sequence[PeftAdapter], spec: ComposeSpec, names: Sequence[str] | None = None
) -> PeftAdapter:
    """A new adapter combining `adapters` as `spec` says (inputs are not modified)."""
    spec.validate(len(adapters))
    names = list(names or [f"adapters[{i}]" for i in range(len(adapters))])
    if spec.method in EQUAL_RANK_METHODS:
        ranks = [sorted(a.ranks) for a in adapters]
        if any(len(r) != 1 for r in ranks) or len({r[0] for r in ranks}) != 1:
            described = ", ".join(
                f"{n} has rank {'/'.join(map(str, r))}" for n, r in zip(names, ranks)
            )
            raise InvalidRequestError(
                f"method {spec.method} needs adapters of one equal rank, but {described}; "
                "use cat for adapters of different ranks",
                param="adapters",
            )
    modules = sorted({m for a in adapters for m in a.modules})
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    if spec.method == "cat":
        rank = sum(a.rank for a in adapters)
        out = {m: _cat_module(adapters, spec.weights, m, rank) for m in modules}
    else:
        import torch

        rank = adapters[0].rank
        generator = torch.Generator().manual_seed(spec.seed)
        out = {m: _merge_module(adapters, spec, m, generator) for m in modules}
    config = lora_config(r=rank, lora_alpha=rank, target_modules=targets)
    return PeftAdapter(config, out)


def _cat_module(
    adapters: Sequence[PeftAdapter], weights: Sequence[float], module: str, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    first_a, first_b = next(a.modules[module] for a in adapters if module in a.modules)
    a_out = torch.zeros(rank, first_a.shape[1])
    b_out = torch.zeros(first_b.shape[0], rank)
    col = 0
    for adapter, weight in zip(adapters, weights):
        if module in adapter.modules:
            a, b = adapter.modules[module]
            r = a.shape[0]
            a_out[col : col + r] = a.float() * (weight * adapter.scaling(module))
            b_out[:, col : col + r] = b.float()
        col += adapter.rank
    return a_out, b_out


def _merge_module(
    adapters: Sequence[PeftAdapter], spec: ComposeSpec, module: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    a_list, b_list, a_weights, b_weights = [], [], [], []
    for adapter, weight in zip(adapters, spec.weights):
        if module not in adapter.modules:
            continue
        a, b = adapter.modules[module]
        scaled = weight * adapter.scaling(module)
        root = math.sqrt(abs(scaled))
        a_list.append(a.float())
        b_list.append(b.float())
        a_weights.append(root if scaled >= 0 else -root)  # the sign on one side only
        b_weights.append(root)
    return (
        _merge(a_list, torch.tensor(a_weights), spec, generator),
        _merge(b_list, torch.tensor(b_weights), spec, generator),
    )


def _merge(
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    spec: ComposeSpec,
    generator: torch.Generator,
) -> torch.Tensor:
    import torch

    if spec.method in ("ties", "dare_ties", "dare_linear") and spec.density < 1.0:
        if spec.method == "ties":
            tensors = [_keep_largest(t, spec.density) for t in tensors]
        else:
            tensors = [_drop_random(t, spec.density, generator) for t in tensors]
    stacked = torch.stack(tensors)  # [n, *shape]
    weighted = stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))
    if spec.method in ("linear", "dare_linear"):
        return weighted.sum(0)
    # ties: elect a sign per entry from the (unweighted) pruned inputs, average those that agree
    votes = stacked.sum(0) if spec.majority_sign_method == "total" else stacked.sign().sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0)
    agrees = stacked.sign() == elected
    return (weighted * agrees).sum(0) / agrees.sum(0).clamp(min=1)


def _keep_largest(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the int(density * numel) entries of largest magnitude."""
    import torch

    k = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel())
    if k > 0:
        mask[tensor.abs().flatten().topk(k).indices] = 1.0
    return tensor * mask.view_as(tensor)


def _drop_random(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability `density`, rescaled by 1/density (DARE)."""
    import torch

    keep = torch.bernoulli(torch.full(tensor.shape, density), generator=generator)
    return tensor * keep / density


def cat_into(inputs: Sequence[tuple[str, float]], out_dir: Path) -> Path:
    """The `cat` composition of PEFT adapters (directory, weight) written to `out_dir`,
    complete or not at all (written beside it, then renamed): a replica applying one
    LoRA per request runs a stacked request on it. Returns `out_dir`."""
    import os
    import shutil
    import uuid

    from ownllm.formats.peft import read_adapter, write_adapter

    composed = compose(
        [read_adapter(path) for path, _ in inputs], ComposeSpec("cat", tuple(w for _, w in inputs))
    )
    scratch = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}")
    write_adapter(scratch, composed)
    try:
        os.rename(scratch, out_dir)
    except OSError:  # another process made it first: theirs is the same composition
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir
