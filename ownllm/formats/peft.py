"""PEFT LoRA adapters on disk: read and validate, check against a base model, write.

The one reader and writer of the format: the registry imports and exports
through it, the engine loads adapters with it and the trainer writes and
continues them with it. An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`
exactly as `peft`'s `save_pretrained` writes them (axolotl and unsloth write
the same), so adapters move between ownllm and the rest of the ecosystem as
they are. Tensors are keyed `base_model.model.<module>.lora_{A,B}[.<name>].weight`;
`<module>` is the base model's module path (`model.layers.0.self_attn.q_proj`),
whose weight `<module>.weight` is `[out, in]`, with A `[r, in]` and B `[out, r]`.

Validation reads the config and the safetensors header first (`read_layout`:
names, dtypes, shapes; no tensor loaded), so rank and shapes are refused
before any weight is read, then checks the tensors one at a time for NaN
and infinity. Every problem is an `InvalidRequestError` whose message names
the file, tensor or module at fault. Left out: DoRA, LoRA on embeddings, trained biases,
`modules_to_save`, per-module `alpha_pattern`, and pickled `adapter_model.bin`
(never unpickled: convert it to safetensors with peft first).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownllm.errors import InvalidRequestError
from ownllm.formats.architectures import LLAMA_FAMILY
from ownllm.formats.safetensors_header import HeaderError, TensorInfo, read_header_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$"
)
# projections the engine applies LoRA to (ownllm.engine.lora.TARGETS maps each to its module)
SUPPORTED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


if TYPE_CHECKING:
    import torch


class AdapterFormatError(InvalidRequestError):
    """The adapter files are not a PEFT LoRA adapter ownllm can use (400)."""

    code = "invalid_adapter"


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # module -> (A [r, in], B [out, r])


@dataclass(frozen=True)
class AdapterLayout:
    """An adapter as its files declare it (config and safetensors header), no tensor loaded:
    per module the keys of its A [r, in] and B [out, r]."""

    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    modules: dict[str, tuple[str, str]]

    def shapes(self) -> Shapes:
        return {
            m: (self.tensors[a].shape, self.tensors[b].shape) for m, (a, b) in self.modules.items()
        }

    @property
    def rank(self) -> int:
        """The largest rank over modules."""
        return max(a[0] for a, _ in self.shapes().values())

    @property
    def target_modules(self) -> list[str]:
        return sorted({module.rsplit(".", 1)[-1] for module in self.modules})


@dataclass
class PeftAdapter:
    """A LoRA adapter in memory: its config and per-module (A [r, in], B [out, r])."""

    config: dict[str, Any]
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The largest rank over modules (the config's `r` unless `rank_pattern` says more)."""
        return max((a.shape[0] for a, _ in self.modules.values()), default=int(self.config["r"]))

    @property
    def ranks(self) -> set[int]:
        return {a.shape[0] for a, _ in self.modules.values()}

    def shapes(self) -> Shapes:
        return {m: (tuple(a.shape), tuple(b.shape)) for m, (a, b) in self.modules.items()}

    @property
    def target_modules(self) -> list[str]:
        """Short target names (`q_proj`, …) that carry weights, sorted."""
        return sorted({module.rsplit(".", 1)[-1] for module in self.modules})

    def scaling(self, module: str) -> float:
        """PEFT's scale of `module`'s delta: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        r = self.modules[module][0].shape[0]
        alpha = float(self.config["lora_alpha"])
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def delta(self, module: str) -> torch.Tensor:
        """The dense weight update `scaling * B @ A` of `module` ([out, in], fp32)."""
        a, b = self.modules[module]
        return self.scaling(module) * (b.float() @ a.float())


def tensor_key(module: str, ab: str) -> str:
    """The key PEFT saves `module`'s lora_A (`ab` "A") or lora_B ("B") under."""
    return f"base_model.model.{module}.lora_{ab}.weight"


def state_dict(modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-module (A, B) as PEFT-keyed fp32 tensors (keys without the adapter name)."""
    tensors = {}
    for module, (a, b) in modules.items():
        tensors[tensor_key(module, "A")] = a.float().contiguous()
        tensors[tensor_key(module, "B")] = b.float().contiguous()
    return tensors


def modules_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT-keyed tensors (with or without the adapter name) paired per module: (A, B)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"{key} is not a PEFT LoRA tensor key")
        parts.setdefault(m["module"], {})[m["ab"]] = tensor
    return {module: (ab["A"], ab["B"]) for module, ab in sorted(parts.items())}


def _fail(message: str, param: str | None = None) -> AdapterFormatError:
    return AdapterFormatError(message, param=param)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and validate `adapter_config.json` of the adapter directory `path`."""
    file = Path(path) / ADAPTER_CONFIG
    if not file.is_file():
        raise _fail(f"{ADAPTER_CONFIG} is missing from the adapter directory")
    try:
        text = file.read_bytes()
    except OSError as e:
        raise _fail(f"cannot read {ADAPTER_CONFIG}: {e}") from None
    return parse_config(text)


def parse_config(text: str | bytes) -> dict[str, Any]:
    """Validate the text of an `adapter_config.json`."""
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(f"{ADAPTER_CONFIG} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise _fail(f"{ADAPTER_CONFIG} must be a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _fail(f"{ADAPTER_CONFIG}: peft_type {peft_type} is not supported (only LORA)")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise _fail(f"{ADAPTER_CONFIG}: r must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise _fail(f"{ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r}")
    unsupported = {
        "use_dora": "DoRA",
        "modules_to_save": "modules_to_save (whole trained modules)",
        "alpha_pattern": "a per-module alpha_pattern",
        "target_parameters": "target_parameters",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise _fail(f"{ADAPTER_CONFIG}: {what} is not supported")
    if config.get("bias", "none") != "none":
        raise _fail(f"{ADAPTER_CONFIG}: trained biases (bias={config['bias']!r}) are not supported")
    return config


def missing_weights(has_pickle: bool) -> AdapterFormatError:
    if has_pickle:
        return _fail(
            "adapter_model.bin (pickle) is not accepted; save the adapter with "
            "safe_serialization=True to get adapter_model.safetensors"
        )
    return _fail(f"{ADAPTER_WEIGHTS} is missing from the adapter directory")


def read_layout(path: str | Path) -> AdapterLayout:
    """The config and safetensors header of an adapter directory, validated; no tensor read."""
    path = Path(path)
    if not path.is_dir():
        raise _fail(f"{path} is not a directory")
    config = read_config(path)
    file = path / ADAPTER_WEIGHTS
    if not file.is_file():
        raise missing_weights((path / "adapter_model.bin").is_file())
    try:
        tensors = read_header_file(file)
    except (HeaderError, OSError) as e:
        raise _fail(f"{ADAPTER_WEIGHTS} is corrupted or not safetensors: {e}") from None
    return plan_layout(config, tensors)


def plan_layout(config: dict[str, Any], tensors: dict[str, TensorInfo]) -> AdapterLayout:
    """Pair the declared tensors into modules, refusing what is not LoRA A/B ownllm can use."""
    parts: dict[str, dict[str, str]] = {}
    for key, info in tensors.items():
        m = _KEY.match(key)
        if m is None:
            what = "DoRA magnitude" if "lora_magnitude" in key else "a non-LoRA tensor"
            if "lora_embedding" in key:
                what = "LoRA on embeddings"
            raise _fail(f"{ADAPTER_WEIGHTS}: tensor {key} is {what}, which is not supported")
        if len(info.shape) != 2 or 0 in info.shape:
            raise _fail(f"{ADAPTER_WEIGHTS}: tensor {key} has shape {info.shape}, not 2-D")
        if info.dtype not in FLOAT_DTYPES:
            raise _fail(
                f"{ADAPTER_WEIGHTS}: tensor {key} is {info.dtype}, not floating point "
                f"({', '.join(FLOAT_DTYPES)})"
            )
        module = parts.setdefault(m["module"], {})
        if m["ab"] in module:
            raise _fail(f"{ADAPTER_WEIGHTS}: module {m['module']} has two lora_{m['ab']} tensors")
        module[m["ab"]] = key
    if not parts:
        raise _fail(f"{ADAPTER_WEIGHTS} holds no LoRA tensors")
    modules = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise _fail(f"{ADAPTER_WEIGHTS}: module {module} lacks lora_{missing}")
        a, b = tensors[ab["A"]].shape, tensors[ab["B"]].shape
        if a[0] != b[1]:
            raise _fail(
                f"{ADAPTER_WEIGHTS}: module {module} has lora_A {a} and "
                f"lora_B {b} of different ranks"
            )
        modules[module] = (ab["A"], ab["B"])
    return AdapterLayout(config, tensors, modules)


def check_rank(layout: AdapterLayout, max_rank: int) -> None:
    """Refuse an adapter whose rank (its config's `r` or any module's) is above `max_rank`."""
    limit = f"this server's LoRA rank limit of {max_rank} (setting engine.max_lora_rank)"
    if layout.config["r"] > max_rank:
        raise _fail(
            f"the adapter's rank is {layout.config['r']} ({ADAPTER_CONFIG} r), above {limit}"
        )
    for module, (a, _) in layout.shapes().items():
        if a[0] > max_rank:
            raise _fail(f"the adapter's rank is {a[0]} (module {module}), above {limit}")


def read_adapter(path: str | Path, max_rank: int | None = None) -> PeftAdapter:
    """Read and validate a PEFT LoRA adapter directory: the header (and its rank against
    `max_rank`, if given), then each tensor."""
    layout = read_layout(path)
    if max_rank is not None:
        check_rank(layout, max_rank)
    tensors = dict(_finite_tensors(path, layout))
    modules = {m: (tensors[a], tensors[b]) for m, (a, b) in layout.modules.items()}
    return PeftAdapter(layout.config, modules)


def check_finite(path: str | Path, layout: AdapterLayout) -> None:
    """Refuse NaN or infinite weights, holding one tensor in memory at a time."""
    for _ in _finite_tensors(path, layout):
        pass


def _finite_tensors(path: str | Path, layout: AdapterLayout) -> Iterator[tuple[str, torch.Tensor]]:
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(path) / ADAPTER_WEIGHTS), framework="pt") as f:
            for key in layout.tensors:
                tensor = f.get_tensor(key)
                if not bool(torch.isfinite(tensor).all()):
                    raise _fail(f"{ADAPTER_WEIGHTS}: tensor {key} is not finite (NaN or infinity)")
                yield key, tensor
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _fail(f"{ADAPTER_WEIGHTS} is corrupted or not safetensors: {e}") from None


def write_adapter(out_dir: str | Path, adapter: PeftAdapter) -> None:
    """Write `adapter` as PEFT saves it (keys without the adapter name), fp32 tensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = state_dict(adapter.modules)
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(adapter.config, indent=2, sort_keys=True))


def lora_config(
    *,
    r: int,
    lora_alpha: float,
    target_modules: list[str],
    base_model_name_or_path: str = "",
    rank_pattern: dict[str, int] | None = None,
    lora_dropout: float = 0.0,
) -> dict[str, Any]:
    """A minimal adapter_config.json that `peft.PeftModel.from_pretrained` accepts."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": rank_pattern or {},
        "alpha_pattern": {},
    }


def base_weight_shapes(base_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Every weight name of a HF model directory and its shape, read from safetensors headers."""
    from safetensors import safe_open

    from ownllm.formats.quant import QUANT_FILE

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        if file.name == QUANT_FILE:  # a model cache's quantised blocks: not the dense weights
            continue
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def check_base(adapter: AdapterLayout | PeftAdapter, base_dir: str | Path) -> None:
    """Refuse an adapter that does not fit the base model in `base_dir`, naming the module
    (from shapes only, so a layout is checked before its tensors are read)."""
    base_dir = Path(base_dir)
    try:
        config = json.loads((base_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read the base model's config.json: {e}") from None
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in LLAMA_FAMILY:
        raise _fail(f"the base model's architecture {arch} does not take LoRA adapters here")
    shapes = base_weight_shapes(base_dir)
    for module, (a, b) in adapter.shapes().items():
        if module.rsplit(".", 1)[-1] not in SUPPORTED_TARGETS:
            raise _fail(
                f"adapter module {module} is not supported: LoRA applies to "
                f"{', '.join(SUPPORTED_TARGETS)} only",
                param="base_model",
            )
        base = shapes.get(f"{module}.weight")
        if base is None:
            raise _fail(
                f"adapter module {module} does not exist in the base model ({arch}, "
                f"{config.get('num_hidden_layers')} layers): it was trained for another base model",
                param="base_model",
            )
        out_features, in_features = base
        if a[1] != in_features or b[0] != out_features:
            raise _fail(
                f"adapter module {module} has lora_A {a} and lora_B {b}, but the base model's {module}.weight is {tuple(base)} "
                f"[out, in]: it was trained for another base model",
                param="base_model",
            )
