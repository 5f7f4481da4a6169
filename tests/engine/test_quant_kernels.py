"""The quantised matmul kernels (csrc/quant_kernels.c) against dequantise-then-matmul.

Three builds run on any x86 machine: the native one (AVX-512 where the CPU has it),
AVX2 + FMA (-DOWNLLM_NO_AVX512) and the portable loop (-DOWNLLM_NO_AVX2 too); a build
whose instructions this CPU lacks is skipped. Every type, both dtypes, odd shapes.

The batched kernel (csrc/quant_gemm.c, for many rows) multiplies by the weights as
quant_dequantize gives them in the dtype (bf16-rounded for bf16), checked the same way
against those; the portable build has none.

Tolerance: the kernel sums float32 products of the exact dequantised weights, so
against a float64 reference its error is float32 summation error, bounded here by
1e-5 * sum |x| |w| per output; bf16 outputs add one bf16 rounding (2^-8 relative).
With AVX512-BF16, bf16 x times q4_0 / q4_1 multiplies x by the nibbles in bf16 (exact
products) and scales each block's sum (csrc/quant_kernels.c): the same bounds hold.

The int8-activation kernels (csrc/quant_i8.c: AVX-512 VNNI natively, AVX2 in the avx2
build, the portable loop) round x to int8 blocks first: against x_hat = d q
(`round_activations`, which must round exactly as the C code does, else one step of q
is far outside the bound) times the dequantised weights, the same bounds hold.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from ownllm.engine import cpu_kernels
from ownllm.formats.quant import QuantWeight, dequantize, quantize, round_activations

pytestmark = pytest.mark.skipif(
    cpu_kernels._compiler() is None, reason="no C compiler on this machine (the torch path runs)"
)

BUILDS = {
    "native": [],
    "avx2": ["-DOWNLLM_NO_AVX512"],
    "portable": ["-DOWNLLM_NO_AVX512", "-DOWNLLM_NO_AVX2"],
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split())


@pytest.fixture(scope="module", params=list(BUILDS))
def build(request, tmp_path_factory):
    flags = _cpu_flags()
    if request.param == "avx2" and not {"avx2", "fma"} <= flags:
        pytest.skip("this CPU has no AVX2 + FMA")
    path = cpu_kernels.build(tmp_path_factory.mktemp(request.param), BUILDS[request.param])
    library = ctypes.CDLL(str(path))
    kernels = {dt: cpu_kernels.CpuKernels(library, dt) for dt in (torch.float32, torch.bfloat16)}
    return request.param, kernels


def test_each_build_runs_the_loop_it_was_built_for(build):
    name, kernels = build
    flags = _cpu_flags()
    expected = {
        "native": "AVX-512"
        if "avx512f" in flags
        else ("AVX2" if {"avx2", "fma"} <= flags else "portable"),
        "avx2": "AVX2",
        "portable": "portable",
    }[name]
    assert kernels[torch.float32].quant_path == expected
    # bf16 x times q4_0 / q4_1 in vdpbf16ps: the native build on an AVX512-BF16 CPU, so the
    # bf16 cases below test that path there and the float path everywhere else
    dot = name == "native" and {"avx512f", "avx512_bf16"} <= flags
    assert kernels[torch.bfloat16].quant_bf16_dot is dot
    vnni = name == "native" and {"avx512f", "avx512vl", "avx512_vnni"} <= flags
    i8 = "AVX-512 VNNI" if vnni else ("portable" if expected == "portable" else "AVX2")
    assert kernels[torch.float32].quant_i8_path == i8
    # the batched kernel: float32 on the build's vectors, bf16 in vdpbf16ps where the
    # decode kernel has it, none in the portable build
    gemm = None if expected == "portable" else expected
    assert kernels[torch.float32].quant_gemm_path == gemm
    assert kernels[torch.bfloat16].quant_gemm_path == ("AVX512-BF16" if dot else gemm)


def _weight(qtype: str, rows: int, cols: int, seed: int) -> QuantWeight:
    gen = torch.Generator().manual_seed(seed)
    # rows of different magnitudes, and an offset so q4_1's minimum matters
    dense = torch.randn(rows, cols, generator=gen) * torch.rand(rows, 1, generator=gen) + 0.1
    return quantize(dense, qtype)


SHAPES = [  # (rows of x, out_features, in_features)
    (1, 37, 96),
    (1, 4, 32),
    (2, 5, 64),
    (3, 33, 160),
    (5, 64, 576),
    (7, 9, 32),
    (16, 41, 288),
    (20, 6, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0", "int8"])
def test_quant_matmul_matches_dequantise_then_matmul(build, qtype, dtype):
    _, kernels = build
    shapes = SHAPES + ([(1, 7, 50), (3, 11, 77)] if qtype == "int8" else [])  # int8: any width
    for seed, (num_rows, out_features, in_features) in enumerate(shapes):
        w = _weight(qtype, out_features, in_features, seed)
        gen = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(num_rows, in_features, generator=gen).to(dtype)
        got = kernels[dtype].quant_matmul(x, w)
        assert got.dtype == dtype and got.shape == (num_rows, out_features)
        dense = dequantize(w).double()
        reference = x.double() @ dense.T
        bound = 1e-5 * (x.double().abs() @ dense.abs().T) + 1e-7
        if dtype == torch.bfloat16:
            bound += reference.abs() * 2**-8
        err = (got.double() - reference).abs()
        assert (err <= bound).all(), (qtype, num_rows, out_features, in_features, err.max())


GEMM_SHAPES = [  # (rows of x, out_features, in_features): whole panels and ragged ones
    (17, 37, 96),
    (33, 64, 576),
    (64, 100, 288),
    (100, 5, 64),
    (24, 8, 32),
    (13, 33, 160),
]


def _bounded(got: torch.Tensor, x: torch.Tensor, dense: torch.Tensor) -> None:
    """got within float32 summation error of x times `dense` (+ one rounding in bf16)."""
    reference = x.double() @ dense.double().T
    bound = 1e-5 * (x.double().abs() @ dense.double().abs().T) + 1e-7
    if got.dtype == torch.bfloat16:
        bound += reference.abs() * 2**-8
    err = (got.double() - reference).abs()
    assert (err <= bound).all(), (list(x.shape), list(dense.shape), err.max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0", "int8"])
def test_quant_gemm_matches_the_dequantised_weight_in_the_dtype(build, qtype, dtype):
    """The batched kernel multiplies by what quant_dequantize gives in the model's dtype
    (bf16-rounded weights for bf16), whatever the rows and columns."""
    _, kernels = build
    k = kernels[dtype]
    for seed, (num_rows, out_features, in_features) in enumerate(GEMM_SHAPES):
        w = _weight(qtype, out_features, in_features, 40 + seed)
        x = torch.randn(num_rows, in_features, generator=torch.Generator().manual_seed(seed))
        x = x.to(dtype)
        if k.quant_gemm_path is None:  # the portable build: the caller keeps its tiles
            assert not k.quant_gemm_takes(w)
            with pytest.raises(ValueError, match="not for a weight"):
                k.quant_gemm(x, w)
            continue
        got = k.quant_gemm(x, w)
        assert got.dtype == dtype and got.shape == (num_rows, out_features)
        _bounded(got, x, dequantize(w, dtype))


def test_quant_gemm_reads_strided_rows_and_refuses_what_it_cannot_take(build):
    _, kernels = build
    k = kernels[torch.bfloat16]
    if k.quant_gemm_path is None:
        pytest.skip("no batched kernel in the portable build")
    w = _weight("q4_1", 20, 64, 8)
    wide = torch.randn(40, 100, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    x = wide[:, 10:74]  # rows contiguous, stride 100
    _bounded(k.quant_gemm(x, w), x, dequantize(w, torch.bfloat16))
    assert k.quant_gemm(x[:0], w).shape == (0, 20)
    odd = _weight("int8", 6, 50, 1)  # int8 rows of any width: not whole blocks
    assert not k.quant_gemm_takes(odd)
    with pytest.raises(ValueError, match="multiple of 32"):
        k.quant_gemm(torch.zeros(20, 50, dtype=torch.bfloat16), odd)
    with pytest.raises(ValueError, match="does not fit"):
        k.quant_gemm(torch.zeros(20, 32, dtype=torch.bfloat16), w)


def test_quant_matmul_reads_strided_rows(build):
    _, kernels = build
    w = _weight("q4_1", 10, 64, 7)
    wide = torch.randn(3, 100)
    x = wide[:, 10:74]  # rows contiguous, stride 100
    got = kernels[torch.float32].quant_matmul(x, w)
    torch.testing.assert_close(got, x @ dequantize(w).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0", "int8"])
def test_quant_dequantize_is_the_reference_bit_for_bit(build, qtype):
    _, kernels = build
    w = _weight(qtype, 13, 77 if qtype == "int8" else 96, 3)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(kernels[dtype].quant_dequantize(w), dequantize(w, dtype))


def test_quant_wrappers_check_before_calling(build):
    _, kernels = build
    w = _weight("q8_0", 4, 64, 0)
    with pytest.raises(ValueError, match="does not fit"):
        kernels[torch.float32].quant_matmul(torch.zeros(2, 32), w)
    with pytest.raises(TypeError, match="cpu torch.float32"):
        kernels[torch.float32].quant_matmul(torch.zeros(2, 64, dtype=torch.bfloat16), w)
    with pytest.raises(TypeError, match="QuantWeight"):
        kernels[torch.float32].quant_matmul(torch.zeros(2, 64), torch.zeros(4, 64))
    assert kernels[torch.float32].quant_matmul(torch.zeros(0, 64), w).shape == (0, 4)


def test_quant_matmul_multiplies_by_the_weight_it_is_given_call_after_call(build):
    """The wrappers keep each weight's checked pointers: weights used in turn, and fresh
    weights made per call (whose ids Python may reuse), each still give their own product."""
    _, kernels = build
    k = kernels[torch.float32]
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(5))
    kept = [_weight("q4_1", 6, 64, seed) for seed in (1, 2)]
    for _ in range(2):
        for w in kept:
            torch.testing.assert_close(
                k.quant_matmul(x, w), x @ dequantize(w).T, rtol=1e-5, atol=1e-5
            )
    for seed in range(20):  # each made, used and dropped: its id is free for the next
        w = _weight("q8_0", 5, 64, 10 + seed)
        torch.testing.assert_close(k.quant_matmul(x, w), x @ dequantize(w).T, rtol=1e-5, atol=1e-5)
        del w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("num_rows", "qtype", "path"),
    [
        (2, "q4_1", "kernel"),
        (8, "q4_1", "gemm"),
        (16, "q4_1", "gemm"),
        (17, "q4_1", "gemm"),
        (40, "q8_0", "gemm"),
        (40, "q4_0", "tiles"),
        (8, "int8", "kernel"),  # int8 of width 50: not whole blocks, so never the batched one
        (40, "int8", "tiles"),
    ],
)
def test_ckernel_ops_quant_linear_each_path(build, monkeypatch, num_rows, qtype, path, dtype):
    """A few rows: the decode kernel; from QUANT_GEMM_MIN_ROWS to QUANT_GEMM_MAX_ROWS the
    batched kernel (where the build has it, else the decode kernel up to
    QUANT_KERNEL_MAX_ROWS); above, dequantised tiles of weight rows (here 3 rows a tile, so
    the last tile is partial) through the GEMM. Bias added."""
    from ownllm.engine import ops

    _, kernels = build
    monkeypatch.setattr(ops, "QUANT_TILE_ELEMENTS", 3 * 64)
    if path == "tiles":
        monkeypatch.setattr(ops, "QUANT_GEMM_MAX_ROWS", 32)
    c_ops = ops.CKernelOps.__new__(ops.CKernelOps)
    c_ops.kernels, c_ops.int8_activations = kernels[dtype], False
    gen = torch.Generator().manual_seed(num_rows)
    w = _weight(qtype, 10, 50 if qtype == "int8" else 64, 11)
    if path == "gemm" and not kernels[dtype].quant_gemm_takes(w):  # the portable build
        path = "kernel" if num_rows <= ops.QUANT_KERNEL_MAX_ROWS else "tiles"
    x = torch.randn(num_rows, w.in_features, generator=gen).to(dtype)
    if dtype == torch.float32:
        bias = torch.randn(10, generator=gen)
        got = c_ops.quant_linear(x, w, bias)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, dequantize(w), bias))
    else:  # the bias is added the same way in both dtypes; here the product alone
        got = c_ops.quant_linear(x, w, None)
        assert got.dtype == dtype
        # the decode kernel multiplies by the exact weights, the others by bf16-rounded ones
        _bounded(got, x, dequantize(w, torch.float32 if path == "kernel" else dtype))


def _rounded_x(x: torch.Tensor) -> torch.Tensor:
    q, d = round_activations(x)
    return (q.double().view(x.shape[0], -1, 32) * d.double().unsqueeze(-1)).view(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0"])
def test_quant_matmul_i8_matches_rounded_x_times_dequantised(build, qtype, dtype):
    _, kernels = build
    for seed, (num_rows, out_features, in_features) in enumerate(SHAPES):
        w = _weight(qtype, out_features, in_features, seed)
        gen = torch.Generator().manual_seed(200 + seed)
        x = torch.randn(num_rows, in_features, generator=gen).to(dtype)
        x[0, :32] = 0  # an all-zero block: d = 0
        got = kernels[dtype].quant_matmul_i8(x, w)
        assert got.dtype == dtype and got.shape == (num_rows, out_features)
        dense, x_hat = dequantize(w).double(), _rounded_x(x)
        reference = x_hat @ dense.T
        bound = 1e-5 * (x_hat.abs() @ dense.abs().T) + 1e-7
        if dtype == torch.bfloat16:
            bound += reference.abs() * 2**-8
        err = (got.double() - reference).abs()
        assert (err <= bound).all(), (qtype, num_rows, out_features, in_features, err.max())
        # what the rounding costs against the exact x: about 1 % of the output's size
        exact = x.double() @ dense.T
        assert (got.double() - exact).norm() <= 0.03 * exact.norm()


def test_quant_matmul_i8_takes_the_block_types_only(build):
    _, kernels = build
    w = _weight("int8", 4, 64, 0)
    with pytest.raises(ValueError, match="takes q4_0, q4_1, q8_0, not int8"):
        kernels[torch.float32].quant_matmul_i8(torch.zeros(1, 64), w)
    assert kernels[torch.float32].quant_matmul_i8(
        torch.zeros(0, 64), _weight("q8_0", 4, 64, 0)
    ).shape == (0, 4)


@pytest.mark.parametrize("num_rows", [3, 40])
def test_int8_activations_torch_and_c_ops_agree(build, num_rows):
    """engine.quant_activations = int8: the C ops (the kernel up to 16 rows, rounded x
    through the dense GEMM above) and the torch ops compute the same thing."""
    from ownllm.engine import ops

    _, kernels = build
    c_ops = ops.CKernelOps.__new__(ops.CKernelOps)
    c_ops.kernels, c_ops.int8_activations = kernels[torch.float32], True
    torch_ops = ops.TorchOps.__new__(ops.TorchOps)
    torch_ops.dtype, torch_ops.int8_activations = torch.float32, True
    w = _weight("q4_1", 10, 64, 12)
    bias = torch.randn(10)
    x = torch.randn(num_rows, 64)
    got = c_ops.quant_linear(x, w, bias)
    torch.testing.assert_close(got, torch_ops.quant_linear(x, w, bias))
    reference = (_rounded_x(x) @ dequantize(w).double().T + bias.double()).float()
    torch.testing.assert_close(got, reference)
