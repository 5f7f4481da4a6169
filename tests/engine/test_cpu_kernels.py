"""The C kernels (ownllm/engine/cpu_kernels.py) against the torch path on random caches.

Both builds are checked: the one this machine uses (AVX-512 where the CPU has it)
and the portable C loop (built with OWNLLM_NO_AVX512), across head sizes,
query-group sizes, block sizes, sliding windows and dtypes.
"""

from __future__ import annotations

import ctypes
import logging
import math

import pytest
import torch

from ownllm.engine import cpu_kernels
from ownllm.engine.attention import AttentionMetadata, build_groups, paged_attention

pytestmark = pytest.mark.skipif(
    cpu_kernels._compiler() is None, reason="no C compiler on this machine (the torch path runs)"
)


@pytest.fixture(scope="module", params=["native", "portable"])
def kernels_by_build(request, tmp_path_factory):
    extra = [] if request.param == "native" else ["-DOWNLLM_NO_AVX512"]
    path = cpu_kernels.build(tmp_path_factory.mktemp(request.param), extra_flags=extra)
    library = ctypes.CDLL(str(path))
    return {dt: cpu_kernels.CpuKernels(library, dt) for dt in (torch.float32, torch.bfloat16)}


def _case(num_heads, num_kv_heads, head_dim, block_size, lengths, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // block_size) for n in lengths) + 3
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    cache = cache.to(dtype)
    # scattered, non-contiguous block tables
    order = torch.randperm(num_blocks - 1, generator=gen).add(1).tolist()
    tables = []
    for n in lengths:
        count = -(-n // block_size)
        tables.append(order[:count])
        order = order[count:]
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(len(lengths), width, generator=gen).to(dtype)
    return cache, tables, qkv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "num_heads, num_kv_heads, head_dim, block_size, window",
    [
        (4, 2, 16, 16, None),
        (9, 3, 64, 16, None),
        (8, 8, 64, 8, None),
        (4, 1, 128, 32, None),
        (6, 2, 24, 16, None),  # head size not a multiple of 16: portable loop everywhere
        (4, 2, 32, 16, 7),  # sliding window
    ],
)
def test_decode_attention_matches_torch(
    kernels_by_build, dtype, num_heads, num_kv_heads, head_dim, block_size, window
):
    kernels = kernels_by_build[dtype]
    lengths = [1, 5, block_size, block_size + 1, 3 * block_size + 7, 70]
    cache, tables, qkv = _case(num_heads, num_kv_heads, head_dim, block_size, lengths, dtype)
    chunks = [(n - 1, 1, t) for n, t in zip(lengths, tables)]
    group_size = num_heads // num_kv_heads
    torch_groups = build_groups(
        chunks, block_size, group_size, num_kv_heads, torch.device("cpu"), window
    )
    kernel_groups = build_groups(
        chunks, block_size, group_size, num_kv_heads, torch.device("cpu"), window, True
    )
    (g,) = kernel_groups
    got = kernels.decode_attention(
        qkv, cache, g.block_tables, g.context_lens, num_heads, num_kv_heads, head_dim, window
    )
    # the torch path writes k/v for the step's rows first: give it their own cached values
    slots = torch.tensor(
        [
            t[(n - 1) // block_size] * block_size + (n - 1) % block_size
            for n, t in zip(lengths, tables)
        ]
    )
    flat = cache.view(2, -1, num_kv_heads, head_dim)
    q = qkv[:, : num_heads * head_dim].reshape(len(lengths), num_heads, head_dim)
    want = paged_attention(
        q, flat[0][slots], flat[1][slots], cache.clone(), AttentionMetadata(slots, torch_groups)
    )
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_cache_rotates_and_writes_slots(kernels_by_build, dtype):
    kernels = kernels_by_build[dtype]
    num_heads, num_kv_heads, head_dim, block_size = 4, 2, 16, 8
    gen = torch.Generator().manual_seed(1)
    rows = 5
    qkv = torch.randn(rows, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen).to(dtype)
    positions = torch.tensor([0, 3, 9, 17, 40])
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = positions.float().unsqueeze(1) * inv_freq
    rope = torch.cat([freqs.cos(), freqs.sin()], dim=-1).contiguous()
    cache = torch.zeros(2, 10, block_size, num_kv_heads, head_dim, dtype=dtype)
    slots = torch.tensor([3, 9, 10, 41, 79])
    original = qkv.float().clone().view(rows, -1, head_dim)
    kernels.rope_cache(qkv, rope, slots, cache, num_heads, num_kv_heads, head_dim)

    # reference: transformers' rotate_half form
    cos = torch.cat([freqs.cos(), freqs.cos()], -1).unsqueeze(1)
    sin = torch.cat([freqs.sin(), freqs.sin()], -1).unsqueeze(1)
    x = original[:, : num_heads + num_kv_heads]
    half = head_dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    want = x * cos + rotated * sin
    heads = qkv.float().view(rows, -1, head_dim)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(heads[:, : num_heads + num_kv_heads], want, atol=tolerance, rtol=0)
    torch.testing.assert_close(heads[:, num_heads + num_kv_heads :], original[:, 6:])
    flat = cache.view(2, -1, num_kv_heads, head_dim).float()
    torch.testing.assert_close(flat[0][slots], heads[:, num_heads : num_heads + num_kv_heads])
    torch.testing.assert_close(flat[1][slots], heads[:, num_heads + num_kv_heads :])
    untouched = torch.ones(flat.shape[1], dtype=torch.bool)
    untouched[slots] = False
    assert not flat[:, untouched].any(), "the kernel wrote outside the step's slots"


def test_build_is_cached_and_keyed_by_source(tmp_path):
    first = cpu_kernels.build(tmp_path)
    assert cpu_kernels.build(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "temporary files left behind"


def test_no_compiler_falls_back_to_torch(monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(cpu_kernels, "_library", cpu_kernels._library.__wrapped__)
    assert cpu_kernels.load(torch.float32, torch.device("cpu"), 4, 2) is None
    assert "using the torch path" in caplog.text


def test_path_names_the_loop_the_build_runs(kernels_by_build, request):
    """The startup log's kernel path, answered by the library's own #ifdefs and shape checks:
    AVX-512 exactly where -march=native found it and the model's shape fits."""
    native = "native" in request.node.callspec.id
    has_avx512 = "avx512f" in cpu_kernels._cpu_signature().split()
    for dtype, kernels in kernels_by_build.items():
        fitting = kernels.path(64, 3)  # SmolLM2-135M: head size 64, 9 heads on 3 kv heads
        if native and has_avx512:
            assert fitting.startswith("C (AVX-512 decode attention")
        else:
            assert fitting.startswith("C (portable loops")
        assert "AVX512-BF16" not in fitting or dtype == torch.bfloat16
        assert kernels.path(24, 2).startswith("C (portable")  # head size not a multiple of 16
        assert kernels.path(64, 16).startswith("C (portable")  # groups above 8


def test_softmax_is_exact_for_equal_scores(kernels_by_build):
    # all keys equal: every query gets the mean of the values, whatever the context length
    kernels = kernels_by_build[torch.float32]
    num_heads, num_kv_heads, head_dim, block_size = 2, 1, 16, 16
    lengths = [33]
    cache, tables, qkv = _case(
        num_heads, num_kv_heads, head_dim, block_size, lengths, torch.float32
    )
    cache[0] = 1.0
    (g,) = build_groups([(32, 1, tables[0])], block_size, 2, 1, torch.device("cpu"), None, True)
    got = kernels.decode_attention(
        qkv, cache, g.block_tables, g.context_lens, num_heads, num_kv_heads, head_dim, None
    )
    values = cache[1].view(-1, head_dim)
    slots = [tables[0][p // block_size] * block_size + p % block_size for p in range(33)]
    want = values[slots].mean(0)
    assert math.isclose(float((got.view(2, head_dim) - want).abs().max()), 0.0, abs_tol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_delta", [True, False], ids=["add+norm", "norm"])
def test_add_rms_norm_matches_torch(kernels_by_build, dtype, with_delta):
    kernels = kernels_by_build[dtype]
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(40, 72, generator=gen) * 3).to(dtype)
    delta = torch.randn(40, 72, generator=gen).to(dtype) if with_delta else None
    weight = torch.rand(72, generator=gen).add(0.5).to(dtype)
    want_x = x + delta if with_delta else x.clone()
    want = torch.nn.functional.rms_norm(want_x.float(), (72,), weight.float(), 1e-5)
    got = kernels.add_rms_norm(x, delta, weight, 1e-5)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x, want_x, atol=0, rtol=0)  # the residual, updated in place
    torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_silu_mul_matches_torch(kernels_by_build, dtype):
    kernels = kernels_by_build[dtype]
    gen = torch.Generator().manual_seed(3)
    gate_up = (torch.randn(33, 2 * 40, generator=gen) * 6).to(dtype)  # exp far from 0 too
    gate, up = gate_up.float().chunk(2, dim=-1)
    want = torch.nn.functional.silu(gate) * up
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        kernels.silu_mul(gate_up).float(), want, atol=tolerance, rtol=tolerance
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lora_matches_per_row_reference(kernels_by_build, dtype):
    kernels = kernels_by_build[dtype]
    gen = torch.Generator().manual_seed(4)
    num_slots, in_features, rank, out_features = 3, 40, 6, 56
    a = torch.randn(num_slots, in_features, rank, generator=gen).to(dtype)
    b = torch.randn(num_slots, rank, out_features, generator=gen).to(dtype)
    x = torch.randn(9, in_features, generator=gen).to(dtype)
    out = torch.randn(9, out_features, generator=gen).to(dtype)
    slots = torch.tensor([-1, 0, 0, 2, -1, 1, 2, 2, 0], dtype=torch.int32)
    want = out.float().clone()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            want[t] += (x[t].float() @ a[s].float()) @ b[s].float()
    kernels.lora(out, x, a, b, slots)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), want, atol=tolerance, rtol=tolerance)
    assert torch.equal(out[0].float(), want[0]) and torch.equal(out[4].float(), want[4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_silu_mul_reads_rows_a_stride_apart(kernels_by_build, dtype):
    kernels = kernels_by_build[dtype]
    wide = torch.randn(7, 2 * 40 + 8, generator=torch.Generator().manual_seed(5)).to(dtype)
    rows = wide[:, : 2 * 40]  # each row contiguous, rows 88 apart
    assert torch.equal(kernels.silu_mul(rows), kernels.silu_mul(rows.contiguous()))


def _misuse_cases(dtype):
    """(call, the error it must raise, words of its message) for callers that get it wrong."""
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    num_heads, num_kv_heads, head_dim = 4, 2, 16
    width = (num_heads + 2 * num_kv_heads) * head_dim
    x, weight = torch.randn(6, 32, dtype=dtype), torch.randn(32, dtype=dtype)
    qkv, cache = torch.randn(3, width, dtype=dtype), torch.zeros(2, 4, 8, 2, 16, dtype=dtype)
    rope, slots = torch.randn(3, head_dim), torch.tensor([0, 1, 2])
    tables, lens = torch.zeros(3, 2, dtype=torch.int32), torch.ones(3, dtype=torch.int32)
    a, b = torch.randn(2, 32, 4, dtype=dtype), torch.randn(2, 4, 24, dtype=dtype)
    out, row_slots = torch.randn(6, 24, dtype=dtype), torch.zeros(6, dtype=torch.int32)
    shape = (num_heads, num_kv_heads, head_dim)
    return {
        "norm: strided x": (
            lambda k: k.add_rms_norm(x.t().contiguous().t(), None, weight, 1e-5),
            ValueError,
            "contiguous",
        ),
        "norm: delta of another shape": (
            lambda k: k.add_rms_norm(x, x[:5], weight, 1e-5),
            ValueError,
            "shapes do not fit",
        ),
        "norm: weight of another dtype": (
            lambda k: k.add_rms_norm(x, None, weight.to(other), 1e-5),
            TypeError,
            str(dtype),
        ),
        "silu_mul: columns strided": (lambda k: k.silu_mul(x[:, ::2]), ValueError, "rows"),
        "silu_mul: odd width": (lambda k: k.silu_mul(x[:, :31]), ValueError, "even"),
        "silu_mul: 1-D": (lambda k: k.silu_mul(weight), ValueError, "2 dimensions"),
        "rope_cache: int32 slots": (
            lambda k: k.rope_cache(qkv, rope, slots.int(), cache, *shape),
            TypeError,
            "torch.int64",
        ),
        "rope_cache: bf16 rope table": (
            lambda k: k.rope_cache(qkv, rope.bfloat16(), slots, cache, *shape),
            TypeError,
            "torch.float32",
        ),
        "rope_cache: qkv of other heads": (
            lambda k: k.rope_cache(qkv, rope, slots, cache, 2, 2, 16),
            ValueError,
            "shapes do not fit",
        ),
        "rope_cache: too few slots": (
            lambda k: k.rope_cache(qkv, rope, slots[:2], cache, *shape),
            ValueError,
            "shapes do not fit",
        ),
        "decode: non-contiguous cache": (
            lambda k: k.decode_attention(qkv, cache.transpose(1, 2), tables, lens, *shape, None),
            ValueError,
            "contiguous",
        ),
        "decode: long tables": (
            lambda k: k.decode_attention(qkv, cache, tables.long(), lens, *shape, None),
            TypeError,
            "torch.int32",
        ),
        "decode: fewer lengths than rows": (
            lambda k: k.decode_attention(qkv, cache, tables, lens[:2], *shape, None),
            ValueError,
            "shapes do not fit",
        ),
        "decode: uneven query groups": (
            lambda k: k.decode_attention(qkv, cache, tables, lens, 3, 2, 16, None),
            ValueError,
            "query heads",
        ),
        "lora: b for another rank": (
            lambda k: k.lora(out, x, a, b[:, :3].contiguous(), row_slots),
            ValueError,
            "shapes do not fit",
        ),
        "lora: a transposed": (
            lambda k: k.lora(out, x, a.transpose(1, 2), b, row_slots),
            ValueError,
            "contiguous",
        ),
        "lora: long row slots": (
            lambda k: k.lora(out, x, a, b, row_slots.long()),
            TypeError,
            "torch.int32",
        ),
        "lora: out of another dtype": (
            lambda k: k.lora(out.to(other), x, a, b, row_slots),
            TypeError,
            str(dtype),
        ),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(_misuse_cases(torch.float32)))
def test_a_wrong_tensor_raises_before_the_kernel_runs(kernels_by_build, dtype, case):
    call, error, words = _misuse_cases(dtype)[case]
    with pytest.raises(error, match=words.replace(".", r"\.")):
        call(kernels_by_build[dtype])


def test_a_failed_allocation_is_a_memory_error():
    with pytest.raises(MemoryError, match="decode_attention"):
        cpu_kernels._done("decode_attention", cpu_kernels._ENOMEM)
    cpu_kernels._done("decode_attention", 0)


@pytest.mark.parametrize(
    "dtype, device, heads, words",
    [
        (torch.float32, torch.device("meta"), (4, 2), "for CPU"),
        (torch.float16, torch.device("cpu"), (4, 2), "float32 and bfloat16"),
        (torch.float32, torch.device("cpu"), (130, 1), "130 query heads per kv head"),
    ],
)
def test_load_says_why_it_uses_torch(caplog, dtype, device, heads, words):
    with caplog.at_level(logging.INFO, logger=cpu_kernels.__name__):
        assert cpu_kernels.load(dtype, device, *heads) is None
    assert words in caplog.text and "using the torch path" in caplog.text
