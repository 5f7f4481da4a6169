"""GGUF tensor names and llama.cpp's rotary row order, for reading and writing GGUF.

llama.cpp's `convert_hf_to_gguf.py` names tensors by `gguf.get_tensor_name_map`
(`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`) and, for the
GGUF arch "llama" (Llama and Mistral), permutes the rows of q_proj and k_proj
so that within each head the two rotary halves interleave. `GgufNames` maps the
names and says which tensors carry that permutation; `permute_rows` applies it
or its inverse, to numpy arrays and torch tensors alike.

Left out: architectures the engine does not serve.
"""

from __future__ import annotations

from typing import Any

# GGUF architecture -> whether convert_hf_to_gguf permutes its q/k rows into llama.cpp's layout
GGUF_ARCHES = {"llama": True, "qwen2": False, "qwen3": False}
# Hugging Face architecture (config.json "architectures") -> GGUF architecture
HF_TO_GGUF_ARCH = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


class GgufNames:
    """HF tensor names -> GGUF names, and which tensors are row-permuted, for one model."""

    def __init__(self, arch: str, num_layers: int, num_heads: int, num_kv_heads: int) -> None:
        import gguf

        self.arch_name = arch  # a key of GGUF_ARCHES
        self.arch = gguf.MODEL_ARCH[arch.upper()]
        self.permutes = GGUF_ARCHES[arch]
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.map = gguf.get_tensor_name_map(self.arch, num_layers)

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a HF tensor (weight or bias), None if it has none."""
        return self.map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def rotary_heads(self, hf_name: str) -> int | None:
        """The number of heads whose rows are permuted in `hf_name` (q/k of a permuting
        arch, weight and bias, as convert_hf_to_gguf does), None if it is stored as is."""
        if not self.permutes:
            return None
        parts = hf_name.rsplit(".", 2)
        module = parts[-2] if len(parts) > 1 else ""
        return {"q_proj": self.num_heads, "k_proj": self.num_kv_heads}.get(module)


def permute_rows(weights: Any, num_heads: int, *, inverse: bool = False) -> Any:
    """HF's rotary row order -> llama.cpp's (within each head, interleave the two row
    halves), or back with `inverse`. `weights` is a numpy array or torch tensor [rows, ...]."""
    half = weights.shape[0] // num_heads // 2
    split = (half, 2) if inverse else (2, half)
    return (
        weights.reshape(num_heads, *split, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
    )
