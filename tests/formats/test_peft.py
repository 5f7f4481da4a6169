"""Reading PEFT adapters as peft saves them, and refusing what does not fit the base."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ownllm.formats import peft as peft_format
from ownllm.formats.peft import (
    AdapterFormatError,
    check_base,
    check_finite,
    check_rank,
    read_adapter,
    read_layout,
)
from ownllm.models.tiny import make_tiny_model
from tests.adapters.conftest import Q_PROJ, make_peft_adapter, write_lora


def test_reads_an_adapter_saved_by_peft(adapter_a, tiny_model_dir):
    adapter = read_adapter(adapter_a)
    assert adapter.rank == 4
    assert adapter.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    a, b = adapter.modules["model.layers.1.self_attn.q_proj"]
    assert a.shape == (4, 64) and b.shape == (64, 4)
    assert adapter.scaling("model.layers.1.self_attn.q_proj") == 2.0  # alpha 8 / r 4
    check_base(adapter, tiny_model_dir)  # fits


def test_wrong_base_names_the_module(adapter_a, tmp_path):
    wider = make_tiny_model(tmp_path / "wider", hidden_size=96, num_heads=4, num_kv_heads=2)
    with pytest.raises(AdapterFormatError, match=r"model\.layers\.0\.self_attn\.k_proj") as e:
        check_base(read_adapter(adapter_a), wider)
    assert e.value.param == "base_model"
    deeper = make_tiny_model(tmp_path / "deeper", num_layers=4)
    adapter = make_peft_adapter(deeper, tmp_path / "deep-adapter")
    with pytest.raises(AdapterFormatError, match=r"model\.layers\.2\..* does not exist"):
        check_base(read_adapter(adapter), make_tiny_model(tmp_path / "shallow"))


def test_corrupted_safetensors_is_refused(adapter_a, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapter_a, broken)
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFormatError, match="corrupted"):
        read_adapter(broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterFormatError, match="corrupted"):
        read_adapter(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"r": 0}, "positive integer"),
        ({"peft_type": "IA3"}, "only LORA"),
        ({"bias": "all"}, "biases"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_unsupported_configs_are_refused(adapter_a, tmp_path, change, message):
    bad = tmp_path / "bad"
    shutil.copytree(adapter_a, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(AdapterFormatError, match=message):
        read_adapter(bad)


def test_missing_half_and_pickles_are_refused(adapter_a, tmp_path):
    from safetensors.torch import load_file, save_file

    half = tmp_path / "half"
    shutil.copytree(adapter_a, half)
    tensors = load_file(str(half / "adapter_model.safetensors"))
    tensors = {k: v for k, v in tensors.items() if "layers.0.self_attn.q_proj.lora_B" not in k}
    save_file(tensors, str(half / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match=r"layers\.0\.self_attn\.q_proj lacks lora_B"):
        read_adapter(half)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(adapter_a / "adapter_config.json", pickled)
    torch.save({}, pickled / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="pickle"):
        read_adapter(pickled)


def no_tensor_reads(monkeypatch):
    def refuse(*_):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(peft_format, "_finite_tensors", refuse)


def test_rank_and_shapes_are_refused_from_the_header(tmp_path, tiny_model_dir, monkeypatch):
    big = write_lora(tmp_path / "big", 20000)
    wide = write_lora(tmp_path / "wide", 4, in_features=96)
    no_tensor_reads(monkeypatch)
    layout = read_layout(big)
    assert layout.rank == 20000 and layout.shapes()[Q_PROJ] == ((20000, 64), (64, 20000))
    with pytest.raises(
        AdapterFormatError, match=r"rank is 20000 \(adapter_config.json r\), above .* limit of 64"
    ):
        check_rank(layout, 64)
    layout.config["r"] = 4  # a config that understates the rank: the shapes tell
    with pytest.raises(
        AdapterFormatError, match=r"rank is 20000 \(module .*q_proj\), above .* limit of 64"
    ):
        check_rank(layout, 64)
    with pytest.raises(AdapterFormatError, match=r"q_proj has lora_A \(4, 96\)") as e:
        check_base(read_layout(wide), tiny_model_dir)
    assert e.value.param == "base_model"


def test_nan_and_integer_weights_are_refused(tmp_path):
    nan = write_lora(tmp_path / "nan", 4, fill=float("nan"))
    with pytest.raises(AdapterFormatError, match="not finite"):
        check_finite(nan, read_layout(nan))
    with pytest.raises(AdapterFormatError, match="not finite"):
        read_adapter(nan)
    from safetensors.torch import save_file

    ints = write_lora(tmp_path / "ints", 4)
    tensors = {
        f"base_model.model.{Q_PROJ}.lora_A.weight": torch.zeros(4, 64, dtype=torch.int32),
        f"base_model.model.{Q_PROJ}.lora_B.weight": torch.zeros(64, 4),
    }
    save_file(tensors, str(ints / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="I32, not floating point"):
        read_layout(ints)
