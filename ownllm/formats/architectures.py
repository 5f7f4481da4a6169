"""The Hugging Face architectures ownllm serves, trains LoRA on and exports.

One list for every layer: the engine's weight loader refuses any other
`config.json`, and the PEFT reader refuses an adapter for any other base.
All are the Llama-family decoder: RMSNorm → rotary attention → RMSNorm →
SwiGLU MLP (Qwen2 adds a qkv bias, Qwen3 q/k norms).
"""

from __future__ import annotations

LLAMA_FAMILY = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
