"""Write and read LoRA weights as a PEFT adapter directory.

`adapter_config.json` + `adapter_model.safetensors` with PEFT's key names
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so
`peft.PeftModel.from_pretrained` loads what we train and the engine loads it
through `ownllm.engine.lora.LoraAdapter.from_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ownllm.tuning.hyperparams import LoraSettings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_config(cfg: LoraSettings, base_model: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": list(cfg.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }


def write_adapter(out_dir: Path, state: dict[str, torch.Tensor], cfg: LoraSettings, base: str):
    """Write the adapter files into `out_dir` (callers pass a temporary dir, renamed after)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = adapter_config(cfg, base)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def read_adapter(path: Path) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    """LoRA settings and PEFT-keyed weights of an adapter dir (to continue training it)."""
    from safetensors.torch import load_file

    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    targets = config["target_modules"]
    if isinstance(targets, str):
        targets = [targets]
    cfg = LoraSettings(
        r=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout") or 0.0),
        target_modules=tuple(t for t in LoraSettings().target_modules if t in targets),
    )
    weights = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    # PEFT saves without the adapter name; some tools keep ".default" before ".weight"
    weights = {k.replace(".default.weight", ".weight"): v for k, v in weights.items()}
    return cfg, weights
