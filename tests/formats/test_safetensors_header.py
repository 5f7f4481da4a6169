"""safetensors headers read without loading a tensor, and refused when they do not add up."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import save_file

from ownllm.formats.safetensors_header import HeaderError, read_header, read_header_file


def test_reads_what_safetensors_writes(tmp_path):
    file = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.ones(2, dtype=torch.bfloat16)}, str(file))
    tensors = read_header_file(file)
    assert {k: (v.dtype, v.shape) for k, v in tensors.items()} == {
        "a": ("F32", (3, 5)),
        "b": ("BF16", (2,)),
    }


def forged(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x02", "shorter"),
        ((1 << 40).to_bytes(8, "little"), "does not fit"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00nope", "not JSON"),
        (forged({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}), "describes"),
        (forged({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8), "bytes"),
        (forged({"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "dtype"),
        (forged({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\0\0"), "starts"),
        (forged({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"), "shape"),
    ],
)
def test_malformed_headers_are_refused(blob, message):
    with pytest.raises(HeaderError, match=message):
        read_header(io.BytesIO(blob), len(blob))
