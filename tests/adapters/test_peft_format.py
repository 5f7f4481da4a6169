"""Reading PEFT adapters as peft saves them, and refusing what does not fit the base."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ownllm.adapters.peft_format import AdapterFormatError, check_base, read_adapter
from tests.adapters.conftest import make_peft_adapter
from tests.tiny import make_tiny_model


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
