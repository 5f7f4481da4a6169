"""Tiny random Llama-family models and PEFT adapters for engine tests, plus HF references.

Weights use a large init range so greedy decoding is far from ties and the
outputs vary token to token (the default 0.02 init repeats one token).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ownllm.models.tiny import make_tokenizer

VOCAB = 512


def make_model(out_dir: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out_dir, vocab_size=VOCAB)
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    name = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}[arch]
    config = getattr(transformers, f"{name}Config")(**kwargs)
    model = getattr(transformers, f"{name}ForCausalLM")(config)
    with torch.no_grad():  # random (non-zero) biases and q/k norms where the model has them
        for name, param in model.named_parameters():
            if name.endswith("proj.bias") or "q_norm" in name or "k_norm" in name:
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def make_constant_model(out_dir: Path, logits: dict[str, float]) -> Path:
    """A Llama whose next-token logits are the same after any prompt: `logits[text]` for
    each single-token text given, 0 for every other token. Sampled at temperature 1, a
    token that leads the others allowed by 40 is chosen but for odds of 512 * e^-40.

    Every token embeds to the same all-ones vector and every layer's output projections
    are zero, so the residual stream is all ones at each position; the final norm (weight
    one) keeps it so, and lm_head row t is logit_t / hidden_size in every column.
    """
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    out_dir = make_model(out_dir)
    path = str(out_dir / "model.safetensors")
    weights = load_file(path)
    for name, weight in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weight.zero_()
    weights["model.embed_tokens.weight"].fill_(1.0)
    weights["model.norm.weight"].fill_(1.0)
    lm_head = weights["lm_head.weight"].zero_()  # [vocab, hidden]
    vocab = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    for text, logit in logits.items():
        (token_id,) = vocab.encode(text, add_special_tokens=False).ids
        lm_head[token_id] = logit / lm_head.shape[1]
    save_file(weights, path, metadata={"format": "pt"})
    return out_dir


def make_adapter(
    model_dir: Path,
    out_dir: Path,
    *,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    alpha: float = 8.0,
    use_rslora: bool = False,
    seed: int = 0,
) -> Path:
    """A PEFT LoRA adapter with random, non-zero A and B, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=use_rslora)
    peft_model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def cat_adapters(parts: list[tuple[Path, float]], out_dir: Path) -> Path:
    """The `cat` composition of weighted adapters: delta = sum_i w_i s_i B_i A_i, as one adapter."""
    from safetensors.torch import load_file, save_file

    loaded = []
    for path, weight in parts:
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
        tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
        loaded.append((cfg, weight * scale, tensors))
    keys = sorted(
        {k.replace("lora_A", "lora_X").replace("lora_B", "lora_X") for *_, t in loaded for k in t}
    )
    total_r = sum(cfg["r"] for cfg, _, _ in loaded)
    out = {}
    for key in keys:
        a_key, b_key = key.replace("lora_X", "lora_A"), key.replace("lora_X", "lora_B")
        a_parts, b_parts = [], []
        ref_a = next(t[a_key] for *_, t in loaded if a_key in t)
        ref_b = next(t[b_key] for *_, t in loaded if b_key in t)
        for cfg, scale, t in loaded:
            r = cfg["r"]
            a_parts.append(t.get(a_key, torch.zeros(r, ref_a.shape[1])))
            b_parts.append(t.get(b_key, torch.zeros(ref_b.shape[0], r)) * scale)
        out[a_key] = torch.cat(a_parts, 0).contiguous()
        out[b_key] = torch.cat(b_parts, 1).contiguous()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / "adapter_model.safetensors"))
    modules = sorted({m for cfg, _, _ in loaded for m in cfg["target_modules"]})
    config = dict(loaded[0][0], r=total_r, lora_alpha=total_r, use_rslora=False)
    config["target_modules"] = modules
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    return out_dir


def hf_greedy(model_dir: Path, prompt: list[int], max_tokens: int, adapter: Path | None = None):
    """Greedy continuation by transformers (and PEFT when `adapter` is given)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def run_to_end(engine, max_steps: int = 10_000) -> dict[str, dict[int, list[int]]]:
    """Step `engine` until idle: {request_id: {choice index: token ids}} (and finish reasons)."""
    tokens: dict[str, dict[int, list[int]]] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            break
        for out in engine.step():
            assert out.error is None, out.error
            tokens.setdefault(out.request_id, {}).setdefault(out.delta.index, []).extend(
                out.delta.token_ids
            )
    return tokens
