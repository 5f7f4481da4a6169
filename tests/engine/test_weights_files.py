"""The engine reads a model directory's weights, not a model cache's quant.blocks (the
GGUF's own quantised blocks, kept beside the dense weights for QLoRA tuning)."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import save_file

from ownllm.engine.weights import load_tensors
from ownllm.formats.quant import QUANT_FILE


def test_quant_file_beside_the_weights_is_not_read(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    dense = load_tensors(model)
    name = next(k for k in dense if k.endswith("input_layernorm.weight"))
    # same key as a dense tensor, another shape: read, it would replace the real one
    save_file({f"model.{name}": torch.zeros(3, 7)}, str(model / QUANT_FILE))
    tensors = load_tensors(model)
    assert tensors.keys() == dense.keys()
    assert torch.equal(tensors[name], dense[name])
