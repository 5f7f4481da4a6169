"""Read a Hugging Face model directory: config.json into `ModelArgs`, *.safetensors into tensors,
and those into the fused per-layer weights (`fuse_weights`) the engine and the trainer share.

Llama-family only (Llama, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norms,
SmolLM): the architectures whose decoder layer is RMSNorm → attention with
rotary embeddings → RMSNorm → SwiGLU MLP. Both config styles are read: the
older `rope_theta` + `rope_scaling` and transformers 5's `rope_parameters`.

Left out: GGUF (ownllm.models dequantises it to a directory first), models
with MoE layers, biased MLPs.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ownllm.formats.architectures import LLAMA_FAMILY
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


def load_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's *.safetensors files, keys without the `model.` prefix;
    not a model cache's quant.blocks (the GGUF's own blocks, for QLoRA tuning)."""
    from safetensors import safe_open

    from ownllm.formats.quant import QUANT_FILE

    files = sorted(f for f in Path(model_dir).glob("*.safetensors") if f.name != QUANT_FILE)
    if not files:
        raise WeightsError(f"{model_dir} has no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                name = key.removeprefix("model.")
                tensors[name] = f.get_tensor(key)
    return tensors


@dataclass
class LayerWeights:
    """One decoder layer, q/k/v and gate/up fused in that order."""

    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(H + 2 Hkv) D, hidden]
    qkv_bias: torch.Tensor | None  # [(H + 2 Hkv) D] (Qwen2)
    q_norm: torch.Tensor | None  # [D] (Qwen3)
    k_norm: torch.Tensor | None  # [D] (Qwen3)
    o: torch.Tensor  # [hidden, H D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 I, hidden]
    down: torch.Tensor  # [hidden, I]


@dataclass
class LlamaWeights:
    embed: torch.Tensor  # [V, hidden]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor | None  # [V, hidden]; None: tied to `embed`
    layers: list[LayerWeights]


def fuse_weights(
    args: ModelArgs,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> LlamaWeights:
    """The model's weights in `dtype` on `device`, contiguous, fused per layer. Consumes
    `tensors` (each is popped as it is converted, so peak memory stays near one copy)."""

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise WeightsError(f"weights lack {name}")
        return tensors.pop(name).to(device=device, dtype=dtype).contiguous()

    def cat(*names: str) -> torch.Tensor:
        return torch.cat([take(n) for n in names]).contiguous()

    def maybe(name: str) -> torch.Tensor | None:
        return take(name) if name in tensors else None

    embed, layers = take("embed_tokens.weight"), []
    for i in range(args.num_layers):
        p, att = f"layers.{i}.", f"layers.{i}.self_attn."
        has_bias = att + "q_proj.bias" in tensors
        layers.append(
            LayerWeights(
                input_norm=take(p + "input_layernorm.weight"),
                qkv=cat(att + "q_proj.weight", att + "k_proj.weight", att + "v_proj.weight"),
                qkv_bias=cat(att + "q_proj.bias", att + "k_proj.bias", att + "v_proj.bias")
                if has_bias
                else None,
                q_norm=maybe(att + "q_norm.weight"),
                k_norm=maybe(att + "k_norm.weight"),
                o=take(att + "o_proj.weight"),
                post_norm=take(p + "post_attention_layernorm.weight"),
                gate_up=cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=take(p + "mlp.down_proj.weight"),
            )
        )
    norm = take("norm.weight")
    tied = args.tie_word_embeddings or "lm_head.weight" not in tensors
    return LlamaWeights(embed, norm, None if tied else take("lm_head.weight"), layers)
