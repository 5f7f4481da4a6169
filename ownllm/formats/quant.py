"""Quantised weight matrices: GGUF's q4_0, q4_1 and q8_0 blocks as the file holds them, and
int8 symmetric per output channel; a torch reference `dequantize` for each.

A `QuantWeight` is one linear layer's weight `[out_features, in_features]` in one of
these types. Every row is quantised on its own, so rows can be sliced, permuted and
concatenated (q, k and v fused into qkv) without touching the bytes of a block.

Layouts, per row (ggml's, little-endian; `in_features` is a multiple of 32 for the
GGUF types, a block each):

- `q4_0`: 18-byte blocks: fp16 scale d, 16 bytes of 4-bit q (byte j holds element
  j in its low nibble and element j + 16 in its high one); w = d (q - 8).
- `q4_1`: 20-byte blocks: fp16 d, fp16 m, 16 bytes of q as q4_0; w = d q + m.
- `q8_0`: 34-byte blocks: fp16 d, 32 int8 q; w = d q.
- `int8`: `data` int8 `[out, in]` and `scale` float32 `[out]`; w = scale[row] q,
  q = round(w / scale) with scale = max |w| of the row / 127.

`dequantize` computes in float32 in the order gguf's numpy reference does
(`gguf.quants.dequantize`), so the two agree bit for bit; `quantize` uses gguf's
reference quantisers (llama.cpp's, round to nearest) for the GGUF types.
`round_activations` is the other half of llama.cpp's scheme, x rounded to int8 blocks
for integer dot products (`model.activations = int8`).
`save_quant_file` / `load_quant_file` store named weights in one safetensors file
(the raw bytes, the types in its metadata): the model cache keeps a GGUF file's
own blocks there.

Left out: the k-quants (q4_K, q6_K, ...) and q5 types: a GGUF file holding them is
served dequantised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: this package loads without it
    import torch

BLOCK = 32  # elements per block, all GGUF types here
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}
QUANT_TYPES = ("q4_0", "q4_1", "q8_0", "int8")
# `model.quantization`: none keeps today's dense weights; auto is a GGUF file's own types
QUANTIZATION_MODES = ("none", "auto", *QUANT_TYPES)
QUANT_FILE = "quant.blocks"  # in a model cache directory: the GGUF file's own blocks, in the
# safetensors format but not named *.safetensors, so that loaders taking every *.safetensors
# file of a directory (vLLM, the dense loader) pass it over
_METADATA_KEY = "ownllm.quant"


class QuantError(ValueError):
    """A weight or file that is not a valid quantised weight of a known type."""


@dataclass(frozen=True)
class QuantWeight:
    """One weight matrix [out_features, in_features], quantised row by row."""

    qtype: str  # one of QUANT_TYPES
    shape: tuple[int, int]  # (out_features, in_features)
    data: torch.Tensor  # uint8 [out, in / 32 * block bytes] (GGUF types); int8 [out, in]
    scale: torch.Tensor | None = None  # float32 [out] for int8, else None

    def __post_init__(self) -> None:
        import torch

        if self.qtype not in QUANT_TYPES:
            raise QuantError(f"unknown quantisation type {self.qtype!r}")
        rows, cols = self.shape
        if self.qtype == "int8":
            if self.data.dtype != torch.int8 or tuple(self.data.shape) != (rows, cols):
                raise QuantError(f"int8 data must be int8 {[rows, cols]}, got {self._got()}")
            if (
                self.scale is None
                or self.scale.dtype != torch.float32
                or tuple(self.scale.shape) != (rows,)
            ):
                raise QuantError(f"int8 needs a float32 scale of [{rows}]")
            return
        if cols % BLOCK:
            raise QuantError(f"{self.qtype}: in_features {cols} is not a multiple of {BLOCK}")
        width = cols // BLOCK * BLOCK_BYTES[self.qtype]
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != (rows, width):
            raise QuantError(
                f"{self.qtype} data must be uint8 [{rows}, {width}], got {self._got()}"
            )

    def _got(self) -> str:
        return f"{self.data.dtype} {list(self.data.shape)}"

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes a matmul reads: the blocks (and the int8 scales)."""
        scale = 0 if self.scale is None else self.scale.numel() * 4
        return self.data.numel() * self.data.element_size() + scale

    def rows(self, index: torch.Tensor | slice) -> QuantWeight:
        """The weight of the selected output rows (a slice or a 1-D index tensor)."""
        data = self.data[index]
        scale = None if self.scale is None else self.scale[index]
        return QuantWeight(self.qtype, (data.shape[0], self.shape[1]), data, scale)

    def to(self, device: torch.device | str) -> QuantWeight:
        scale = None if self.scale is None else self.scale.to(device)
        return QuantWeight(self.qtype, self.shape, self.data.to(device).contiguous(), scale)


def cat_rows(weights: list[QuantWeight]) -> QuantWeight:
    """Stack weights of one type and in_features along the output rows (fused qkv, gate_up)."""
    import torch

    first = weights[0]
    for w in weights[1:]:
        if w.qtype != first.qtype or w.in_features != first.in_features:
            raise QuantError(
                f"cannot fuse {w.qtype} [*, {w.in_features}] with "
                f"{first.qtype} [*, {first.in_features}]"
            )
    data = torch.cat([w.data for w in weights]).contiguous()
    scale = None if first.scale is None else torch.cat([w.scale for w in weights]).contiguous()
    return QuantWeight(first.qtype, (data.shape[0], first.in_features), data, scale)


def _fp16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 at byte `offset` of every block [..., bytes] as float32 [..., 1]."""
    import torch

    return blocks[..., offset : offset + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 bytes per block [..., 16] -> the 32 4-bit values [..., 32]: low nibbles first."""
    import torch

    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def dequantize(weight: QuantWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense weight [out, in] in `dtype` (default float32; computed in float32, then
    cast)."""
    import torch

    dtype = dtype or torch.float32

    rows, cols = weight.shape
    if weight.qtype == "int8":
        dense = weight.data.float() * weight.scale[:, None]
        return dense.to(dtype)
    blocks = weight.data.view(rows, cols // BLOCK, BLOCK_BYTES[weight.qtype])
    d = _fp16(blocks, 0)
    if weight.qtype == "q8_0":
        dense = blocks[..., 2:].contiguous().view(torch.int8).float() * d
    elif weight.qtype == "q4_0":
        dense = d * (_nibbles(blocks[..., 2:]).to(torch.int8) - 8).float()
    else:  # q4_1
        dense = d * _nibbles(blocks[..., 4:]).float() + _fp16(blocks, 2)
    return dense.reshape(rows, cols).to(dtype)


def round_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (K a multiple of 32) rounded to 8 bits a block of 32, as the int8-activation
    kernels round it (ggml's q8_0 with a float32 scale): q int8 [..., K] and d float32
    [..., K / 32] with d = max |x| / 127 and q = round(x / d), half to even; x ~ d q."""
    import torch

    *lead, cols = x.shape
    if cols % BLOCK:
        raise QuantError(f"activations of width {cols} are not whole blocks of {BLOCK}")
    blocks = x.float().reshape(*lead, cols // BLOCK, BLOCK)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    inverse = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(blocks * inverse).to(torch.int8)
    return q.reshape(*lead, cols), d.squeeze(-1)


def quantize(weight: torch.Tensor, qtype: str) -> QuantWeight:
    """`weight` [out, in] (any float dtype) quantised to `qtype`: gguf's reference
    quantisers for the GGUF types, per-row absmax for int8."""
    import torch

    if weight.dim() != 2:
        raise QuantError(f"quantize takes a 2-D weight, got shape {list(weight.shape)}")
    dense = weight.detach().to(device="cpu", dtype=torch.float32)
    rows, cols = dense.shape
    if qtype == "int8":
        scale = dense.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(dense / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return QuantWeight("int8", (rows, cols), q.contiguous(), scale.contiguous())
    if qtype not in BLOCK_BYTES:
        raise QuantError(f"unknown quantisation type {qtype!r} (known: {', '.join(QUANT_TYPES)})")
    if cols % BLOCK:
        raise QuantError(f"{qtype}: in_features {cols} is not a multiple of {BLOCK}")
    import gguf

    blocks = gguf.quants.quantize(dense.numpy(), _gguf_type(qtype))
    return QuantWeight(qtype, (rows, cols), torch.from_numpy(blocks.copy()).view(rows, -1))


def _gguf_type(qtype: str):
    import gguf

    return {
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[qtype]


def gguf_qtype(tensor_type: Any) -> str | None:
    """The QUANT_TYPES name of a gguf `GGMLQuantizationType`, None when it is not one."""
    name = getattr(tensor_type, "name", str(tensor_type)).lower()
    return name if name in BLOCK_BYTES else None


def from_gguf_tensor(tensor: Any) -> QuantWeight | None:
    """A `gguf.GGUFReader` tensor's own blocks as a QuantWeight (copied out of the file's
    memory map), None when its type is not q4_0, q4_1 or q8_0."""
    import torch

    qtype = gguf_qtype(tensor.tensor_type)
    if qtype is None:
        return None
    cols, rows = (int(n) for n in tensor.shape)  # GGUF lists the fastest dimension first
    data = torch.from_numpy(tensor.data.copy()).view(torch.uint8).reshape(rows, -1)
    return QuantWeight(qtype, (rows, cols), data)


def save_quant_file(path: Path, weights: dict[str, QuantWeight]) -> None:
    """Write `weights` (name -> QuantWeight) to one safetensors file."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, list] = {}
    for name, w in weights.items():
        tensors[name] = w.data.contiguous()
        if w.scale is not None:
            tensors[name + ".scale"] = w.scale.contiguous()
        meta[name] = [w.qtype, *w.shape]
    save_file(tensors, str(path), metadata={_METADATA_KEY: json.dumps(meta)})


def load_quant_file(path: Path) -> dict[str, QuantWeight]:
    """The weights `save_quant_file` wrote (QuantError for a file it did not write)."""
    from safetensors import safe_open

    out: dict[str, QuantWeight] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_METADATA_KEY])
            for name, (qtype, rows, cols) in meta.items():
                scale = f.get_tensor(name + ".scale") if qtype == "int8" else None
                out[name] = QuantWeight(qtype, (int(rows), int(cols)), f.get_tensor(name), scale)
    except (OSError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, QuantError):
            raise
        raise QuantError(f"{path} is not a quantised-weights file: {e}") from None
    return out
