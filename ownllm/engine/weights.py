"""Read a Hugging Face model directory: config.json into `ModelArgs`, *.safetensors into tensors,
and those into the fused per-layer weights (`fuse_weights`) the engine and the trainer share.

Llama-family only (Llama, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norms,
SmolLM): the architectures whose decoder layer is RMSNorm → attention with
rotary embeddings → RMSNorm → SwiGLU MLP. Both config styles are read: the
older `rope_theta` + `rope_scaling` and transformers 5's `rope_parameters`.

`load_weights` adds `model.quantization`: the linear layers' weights as
`QuantWeight`s (`ownllm.formats.quant`), a GGUF file's own blocks where the
model cache holds them (quant.blocks), else quantised here from the dense
weights; `fuse_weights` fuses those as it fuses dense ones.

Left out: GGUF (ownllm.models dequantises it to a directory first, keeping its
blocks beside), models with MoE layers, biased MLPs.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ownllm.formats.architectures import LLAMA_FAMILY
from ownllm.formats.quant import (
    QUANT_FILE,
    QUANTIZATION_MODES,
    QuantError,
    QuantWeight,
    cat_rows,
    dequantize,
    load_quant_file,
    quantize,
)
from ownllm.models.catalog import ModelLoadError

SUPPORTED_ARCHITECTURES = LLAMA_FAMILY

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightsError(ModelLoadError):
    """The model directory cannot be served by the embedded engine."""


@dataclass(frozen=True)
class ModelArgs:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    sliding_window: int | None = None

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        arch = (config.get("architectures") or ["LlamaForCausalLM"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise WeightsError(
                f"architecture {arch} is not supported by the embedded engine "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        if config.get("hidden_act", "silu") != "silu" or config.get("mlp_bias"):
            raise WeightsError("only SwiGLU MLPs without bias are supported")
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or config.get("rope_theta", 10000.0)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        heads = config["num_attention_heads"]
        window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
        return cls(
            architecture=arch,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=rope if rope_type != "default" else None,
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            sliding_window=window if arch == "MistralForCausalLM" else None,
        )


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' is bfloat16 where the CPU/GPU computes it natively, else float32."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise WeightsError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        return _DTYPES[dtype]
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def read_config(model_dir: Path) -> ModelArgs:
    path = Path(model_dir) / "config.json"
    try:
        return ModelArgs.from_hf_config(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"cannot read {path}: {e}") from None


def safetensors_files(model_dir: Path) -> list[Path]:
    """The directory's *.safetensors files, sorted (a model cache's quant.blocks is not one)."""
    files = sorted(f for f in Path(model_dir).glob("*.safetensors") if f.name != QUANT_FILE)
    if not files:
        raise WeightsError(f"{model_dir} has no *.safetensors files")
    return files


def load_tensors(
    model_dir: Path, skip: set[str] | frozenset = frozenset()
) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's *.safetensors files but the names in `skip`, keys
    without the `model.` prefix; not a model cache's quant.blocks (the GGUF's own
    blocks, read by `load_weights` and for QLoRA tuning)."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                name = key.removeprefix("model.")
                if name not in skip:
                    tensors[name] = f.get_tensor(key)
    return tensors


def quantisable(name: str) -> bool:
    """Whether `name` (no `model.` prefix) is a weight `model.quantization` quantises: the
    linear layers, the embedding and lm_head (norms and biases stay dense)."""
    return name.endswith("_proj.weight") or name in ("embed_tokens.weight", "lm_head.weight")


def load_weights(
    model_dir: Path, quantization: str = "none"
) -> dict[str, torch.Tensor | QuantWeight]:
    """`load_tensors`, with the quantisable weights as QuantWeights for `quantization`:

    - `none`: all dense;
    - `auto`: the GGUF file's own blocks where the cache holds them (a Hugging Face
      directory has none: all dense);
    - `q4_0`, `q4_1`, `q8_0`, `int8`: every quantisable weight in that type, the file's
      own blocks where they are of that type, else quantised from the dense weight.
    """
    if quantization not in QUANTIZATION_MODES:
        raise WeightsError(
            f"quantization {quantization!r}: use one of {', '.join(QUANTIZATION_MODES)}"
        )
    if quantization == "none":
        return load_tensors(model_dir)
    path = Path(model_dir) / QUANT_FILE
    try:
        own = {k.removeprefix("model."): w for k, w in load_quant_file(path).items()}
    except QuantError as e:
        if path.exists():
            raise WeightsError(str(e)) from None
        own = {}
    if quantization != "auto":
        own = {k: w for k, w in own.items() if w.qtype == quantization}
    tensors: dict[str, torch.Tensor | QuantWeight] = dict(load_tensors(model_dir, set(own)))
    tensors.update(own)
    if quantization == "auto":
        return tensors
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and quantisable(name):
            try:
                tensors[name] = quantize(value, quantization)
            except QuantError as e:
                raise WeightsError(f"cannot quantise {name} to {quantization}: {e}") from None
    return tensors


def dequantise_all(
    tensors: dict[str, torch.Tensor | QuantWeight],
) -> dict[str, torch.Tensor]:
    """Every QuantWeight of `tensors` replaced by its dense float32 weight (in place)."""
    for name, value in tensors.items():
        if isinstance(value, QuantWeight):
            tensors[name] = dequantize(value)
    return tensors  # type: ignore[return-value]


@dataclass
class LayerWeights:
    """One decoder layer, q/k/v and gate/up fused in that order."""

    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor | QuantWeight  # [(H + 2 Hkv) D, hidden]
    qkv_bias: torch.Tensor | None  # [(H + 2 Hkv) D] (Qwen2)
    q_norm: torch.Tensor | None  # [D] (Qwen3)
    k_norm: torch.Tensor | None  # [D] (Qwen3)
    o: torch.Tensor | QuantWeight  # [hidden, H D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor | QuantWeight  # [2 I, hidden]
    down: torch.Tensor | QuantWeight  # [hidden, I]


@dataclass
class LlamaWeights:
    embed: torch.Tensor | QuantWeight  # [V, hidden]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor | QuantWeight | None  # [V, hidden]; None: tied to `embed`
    layers: list[LayerWeights]


def fuse_weights(
    args: ModelArgs,
    tensors: dict[str, torch.Tensor | QuantWeight],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> LlamaWeights:
    """The model's weights in `dtype` on `device`, contiguous, fused per layer; QuantWeights
    stay quantised (fused when the parts share a type, else dequantised to `dtype`). Consumes
    `tensors` (each is popped as it is converted, so peak memory stays near one copy)."""

    def take(name: str) -> torch.Tensor | QuantWeight:
        if name not in tensors:
            raise WeightsError(f"weights lack {name}")
        value = tensors.pop(name)
        if isinstance(value, QuantWeight):
            return value.to(device)
        return value.to(device=device, dtype=dtype).contiguous()

    def cat(*names: str) -> torch.Tensor | QuantWeight:
        parts = [take(n) for n in names]
        if len(parts) == 1:
            return parts[0]
        if all(isinstance(p, QuantWeight) for p in parts):
            types = {p.qtype for p in parts}
            if len(types) == 1:
                return cat_rows(parts)
        dense = [
            dequantize(p, dtype).to(device) if isinstance(p, QuantWeight) else p for p in parts
        ]
        return torch.cat(dense).contiguous()

    return assemble_weights(args, cat, cat, lambda name: name in tensors)


def assemble_weights(
    args: ModelArgs,
    take: Callable[..., torch.Tensor | QuantWeight],
    matrix: Callable[..., torch.Tensor | QuantWeight],
    has: Callable[[str], bool],
) -> LlamaWeights:
    """The fused layout of a Llama-family model, its parts taken in checkpoint order (so a
    loader that reads as it goes holds little at once). `take(*names)` gives the embedding,
    the norms, the biases and the head, `matrix(*names)` a decoder layer's matrix; each
    concatenates the rows of several names. `has(name)` says whether an optional one exists."""

    def maybe(name: str) -> torch.Tensor | None:
        return take(name) if has(name) else None

    embed, layers = take("embed_tokens.weight"), []
    for i in range(args.num_layers):
        p, att = f"layers.{i}.", f"layers.{i}.self_attn."
        bias = (att + "q_proj.bias", att + "k_proj.bias", att + "v_proj.bias")
        layers.append(
            LayerWeights(
                input_norm=take(p + "input_layernorm.weight"),
                qkv=matrix(att + "q_proj.weight", att + "k_proj.weight", att + "v_proj.weight"),
                qkv_bias=take(*bias) if has(bias[0]) else None,
                q_norm=maybe(att + "q_norm.weight"),
                k_norm=maybe(att + "k_norm.weight"),
                o=matrix(att + "o_proj.weight"),
                post_norm=take(p + "post_attention_layernorm.weight"),
                gate_up=matrix(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=matrix(p + "mlp.down_proj.weight"),
            )
        )
    norm = take("norm.weight")
    tied = args.tie_word_embeddings or not has("lm_head.weight")
    return LlamaWeights(embed, norm, None if tied else take("lm_head.weight"), layers)
