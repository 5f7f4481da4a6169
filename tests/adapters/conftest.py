"""Adapters saved by `peft` itself on the tiny random model, with random lora_B
(peft initialises B to zero, which would make every adapter a no-op)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ownllm.store.blobs import DataDir
from ownllm.store.db import Database

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
Q_PROJ = "model.layers.0.self_attn.q_proj"
ALL = (*ATTN, "gate_proj", "up_proj", "down_proj")


def make_peft_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    r: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = ATTN,
    seed: int = 0,
    scale: float = 0.5,
    use_rslora: bool = False,
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        use_rslora=use_rslora,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def write_lora(out_dir: Path, r: int, *, module: str = Q_PROJ, fill: float = 0.0, **shapes) -> Path:
    """A one-module PEFT adapter written without peft: A [r, in] and B [out, r] of `fill`
    (zeros compress to almost nothing: the shape of an archive that amplifies)."""
    import torch

    from ownllm.formats.peft import PeftAdapter, lora_config, write_adapter

    a = torch.full((r, shapes.get("in_features", 64)), fill)
    b = torch.full((shapes.get("out_features", 64), r), fill)
    config = lora_config(r=r, lora_alpha=r, target_modules=[module.rsplit(".", 1)[-1]])
    write_adapter(out_dir, PeftAdapter(config, {module: (a, b)}))
    return Path(out_dir)


def zip_dir(directory: Path, archive: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(directory.iterdir()):
            zf.write(file, f"adapter/{file.name}")
    return archive


@pytest.fixture
def data_dir(tmp_path) -> DataDir:
    return DataDir(tmp_path / "home").ensure()


@pytest.fixture
def db(db_url):
    database = Database.open(db_url)
    yield database
    database.close()


PROMPTS = [[5, 6, 7], list(range(40, 59)), [300, 17, 99, 4, 250, 11, 8]]
MAX_TOKENS = 10


def engine_greedy(
    model_dir: Path,
    resolver,
    adapters: tuple[tuple[str, float], ...] = (),
    prompts: list[list[int]] = PROMPTS,
    max_tokens: int = MAX_TOKENS,
) -> list[list[int]]:
    """ownllm's embedded engine (fp32, CPU): greedy token ids for each prompt."""
    from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    engine = LLMEngine(
        model_dir, EngineConfig(kv_cache_tokens=2048), dtype="float32", adapter_resolver=resolver
    )
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    weights = tuple(AdapterWeight(a, w) for a, w in adapters)
    for i, prompt in enumerate(prompts):
        engine.add_request(GenerateRequest(f"r{i}", list(prompt), sampling, adapters=weights))
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            assert out.error is None, out.error
            tokens.setdefault(out.request_id, []).extend(out.delta.token_ids)
    return [tokens[f"r{i}"] for i in range(len(prompts))]


def hf_greedy(model, prompts=PROMPTS, max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """transformers/PEFT greedy token ids for each prompt (EOS ignored)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            gen = model.generate(
                ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                attention_mask=torch.ones_like(ids),
                pad_token_id=0,
            )
            out.append(gen[0, len(prompt) :].tolist())
    return out


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
