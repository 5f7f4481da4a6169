"""Placing a PEFT adapter on the engine's layers: read through the one PEFT reader."""

from __future__ import annotations

import json

import pytest

from ownllm.engine.lora import TARGETS, LoraAdapter, module_path
from ownllm.engine.weights import read_config
from ownllm.errors import InvalidRequestError
from ownllm.formats.peft import SUPPORTED_TARGETS, AdapterFormatError
from tests.adapters.conftest import Q_PROJ, write_lora


def test_an_adapter_lands_on_its_layer_and_target_with_peft_scaling(tiny_model_dir, tmp_path):
    path = write_lora(tmp_path / "a", 4, fill=0.5)
    adapter = LoraAdapter.from_dir("a", path, read_config(tiny_model_dir), max_rank=8)
    assert adapter.rank == 4 and set(adapter.weights) == {(0, "q_proj")}
    _, _, scaling = adapter.weights[(0, "q_proj")]
    assert scaling == 1.0  # alpha 4 / r 4
    assert module_path(0, "q_proj") == Q_PROJ
    assert tuple(TARGETS) == SUPPORTED_TARGETS


def test_refusals_name_the_adapter(tiny_model_dir, tmp_path):
    args = read_config(tiny_model_dir)
    with pytest.raises(AdapterFormatError, match=r"^adapter 'big': .*rank is 16.*limit of 8"):
        LoraAdapter.from_dir("big", write_lora(tmp_path / "big", 16), args, max_rank=8)
    nan = write_lora(tmp_path / "nan", 4, fill=float("nan"))
    with pytest.raises(AdapterFormatError, match=r"^adapter 'nan': .*not finite"):
        LoraAdapter.from_dir("nan", nan, args, max_rank=8)
    wide = write_lora(tmp_path / "wide", 4, in_features=96)
    with pytest.raises(InvalidRequestError, match=r"^adapter 'wide' does not fit"):
        LoraAdapter.from_dir("wide", wide, args, max_rank=8)
    patterned = write_lora(tmp_path / "patterned", 4)
    config = json.loads((patterned / "adapter_config.json").read_text())
    config["alpha_pattern"] = {"q_proj": 32}  # would scale silently wrong if ignored
    (patterned / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=r"^adapter 'patterned': .*alpha_pattern"):
        LoraAdapter.from_dir("patterned", patterned, args, max_rank=8)
