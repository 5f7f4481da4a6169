"""What bf16 costs in quality against fp32 on the shipped model.

Two measures over a set of chat prompts, greedy 64 tokens:
- generation: our engine in fp32 and in bf16; how many tokens match before the first
  divergence (a divergence is not an error, just a different but often equally good path);
- teacher-forced: transformers runs the fp32 continuation in fp32 and bf16; the share of
  positions where bf16's top-1 token equals fp32's, and the mean KL(fp32 || bf16).
Usage: python -m bench.dtype_quality
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ownllm.backends.base import GenerateRequest, SamplingParams
from ownllm.config import EngineConfig
from ownllm.engine.llm_engine import LLMEngine
from ownllm.models import prepare_model, resolve_model

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a LoRA adapter is in two sentences.",
    "List three uses of Python.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 times 23?",
    "Give me a name for a bakery.",
]


def generate(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    for i, ids in enumerate(prompts):
        engine.add_request(
            GenerateRequest(str(i), ids, SamplingParams(max_tokens=64, temperature=0))
        )
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.delta.token_ids)
    return [out[str(i)] for i in range(len(prompts))]


def main() -> None:
    model_dir = prepare_model(
        resolve_model("smollm2-135m-instruct"), Path.home() / ".cache" / "ownllm-bench"
    ).path
    config = EngineConfig(kv_cache_tokens=8192)
    fp32 = LLMEngine(model_dir, config, dtype="float32")
    prompts = [fp32.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    out32 = generate(fp32, prompts)
    del fp32
    out16 = generate(LLMEngine(model_dir, config, dtype="bfloat16"), prompts)
    prefix = []
    for a, b in zip(out32, out16):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(n / max(len(a), 1))

    from transformers import AutoModelForCausalLM

    hf32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    agree, kls = [], []
    with torch.no_grad():
        for p, c in zip(prompts, out32):
            ids = torch.tensor([p + c])
            l32 = hf32(ids).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
            l16 = hf16(ids).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
            agree.append((l32.argmax(-1) == l16.argmax(-1)).float().mean().item())
            kls.append((l32.exp() * (l32 - l16)).sum(-1).mean().item())
    print(f"prompts: {len(PROMPTS)}, greedy 64 tokens")
    print(
        f"engine bf16 vs fp32, identical greedy prefix: mean {statistics.mean(prefix):.0%}, "
        f"fully identical {sum(x == 1.0 for x in prefix)}/{len(prefix)}"
    )
    print(f"teacher-forced top-1 agreement bf16 vs fp32: {statistics.mean(agree):.1%}")
    print(f"teacher-forced mean KL(fp32 || bf16): {statistics.mean(kls):.4f} nats/token")


if __name__ == "__main__":
    main()
