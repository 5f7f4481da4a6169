"""safetensors headers: every tensor's dtype, shape and byte range, without loading one.

A safetensors file is an 8-byte little-endian length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": …}`),
then the tensor bytes. Reading only that much (from a file or straight from
an archive member) lets an import refuse an adapter by the shapes it declares
before any tensor is read, unpacked or copied. The byte ranges must tile the
data exactly, as the safetensors library itself requires, so a header that
passes also bounds the file's size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# a LoRA adapter's header is a few KB; the safetensors library allows 100 MB
MAX_HEADER_BYTES = 16 << 20
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "U64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


class HeaderError(ValueError):
    """The bytes are not a well-formed safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data that follows the header
    end: int


def read_header(f: BinaryIO, file_size: int) -> dict[str, TensorInfo]:
    """The tensors a safetensors stream of `file_size` bytes declares, by name.

    Reads 8 + N bytes from `f`; raises HeaderError when the header is malformed
    or its byte ranges do not tile the rest of the file exactly."""
    prefix = f.read(8)
    if len(prefix) != 8:
        raise HeaderError("shorter than a safetensors header")
    length = int.from_bytes(prefix, "little")
    if length > MAX_HEADER_BYTES or 8 + length > file_size:
        raise HeaderError(f"header length {length} does not fit a {file_size}-byte file")
    raw = f.read(length)
    if len(raw) != length:
        raise HeaderError("the header is cut short")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise HeaderError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {name: _entry(name, entry) for name, entry in header.items()}
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: item[1].begin):
        if info.begin != position:
            raise HeaderError(f"tensor {name} starts at byte {info.begin}, expected {position}")
        position = info.end
    if 8 + length + position != file_size:
        raise HeaderError(
            f"the file is {file_size} bytes but its header describes {8 + length + position}"
        )
    return tensors


def read_header_file(path: str | Path) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        return read_header(f, os.fstat(f.fileno()).st_size)


def _entry(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise HeaderError(f"tensor {name}: not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise HeaderError(f"tensor {name}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise HeaderError(f"tensor {name}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise HeaderError(f"tensor {name}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise HeaderError(f"tensor {name}: {end - begin} bytes for {dtype} {shape}")
    return TensorInfo(dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
