"""The quantised decode matmul alone: one gate_up-shaped product of the shipped model
(x [rows, 576] bf16 or fp32 times W [3072, 576]^T) per kernel build and weight type,
against torch's dense product on the same shape, in one run.

    .venv/bin/python -m bench.quant_kernel [--rows 1] [--iters 2000] [--dtype bf16]

Builds: native (AVX-512 where present), nobf16dot (-DOWNLLM_NO_BF16DOT), avx2 (-DOWNLLM_NO_AVX512), portable. Each row
is the median microseconds of --iters calls after a warm-up, the builds and torch taking
turns in rounds so the shared box's load hits them alike; "int8 x" rows round x to int8
blocks first and use integer dot products (`engine.quant_activations = int8`); weights are resident in cache
(1.1 MB in q4_1), so this is the kernel's arithmetic, not memory bandwidth.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ownllm.engine import cpu_kernels
from ownllm.formats.quant import quantize

BUILDS = {
    "native": [],
    "nobf16dot": ["-DOWNLLM_NO_BF16DOT"],
    "avx2": ["-DOWNLLM_NO_AVX512"],
    "portable": ["-DOWNLLM_NO_AVX512", "-DOWNLLM_NO_AVX2"],
}


def cpu_flags() -> str:
    words = set(Path("/proc/cpuinfo").read_text().split())
    flags = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16")
    return " ".join(f for f in flags if f in words) or "none"


def timed(fn, iters: int) -> float:
    """Median microseconds of fn() over iters calls."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--types", default="q4_1,q4_0,q8_0,int8")
    parser.add_argument("--builds", default="native,nobf16dot,avx2")
    parser.add_argument("--out-features", type=int, default=3072)
    parser.add_argument("--in-features", type=int, default=576)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(
        f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; load average {os.getloadavg()}"
    )
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(args.out_features, args.in_features, generator=gen) * 0.05
    x = torch.randn(args.rows, args.in_features, generator=gen).to(dtype)
    weights = {t: quantize(dense, t) for t in args.types.split(",")}
    dense_w = dense.to(dtype)
    systems = {f"torch dense {args.dtype}": lambda: torch.nn.functional.linear(x, dense_w)}
    with tempfile.TemporaryDirectory() as root:
        for name in args.builds.split(","):
            path = cpu_kernels.build(Path(root) / name, BUILDS[name])
            kernels = cpu_kernels.CpuKernels(ctypes.CDLL(str(path)), dtype)
            for qtype, w in weights.items():
                dot = " + bf16 dot" if kernels.quant_bf16_dot and qtype in ("q4_0", "q4_1") else ""
                label = f"{qtype} {name} ({kernels.quant_path}{dot})"
                systems[label] = lambda k=kernels, w=w: k.quant_matmul(x, w)
                if qtype in cpu_kernels.I8_TYPES:  # x rounded to int8 blocks (quant_i8.c)
                    label = f"{qtype} {name} int8 x ({kernels.quant_i8_path})"
                    systems[label] = lambda k=kernels, w=w: k.quant_matmul_i8(x, w)
        for fn in systems.values():
            timed(fn, 50)
        results: dict[str, list[float]] = {k: [] for k in systems}
        for _ in range(args.rounds):
            for key, fn in systems.items():
                results[key].append(timed(fn, args.iters))
    base = statistics.median(results[f"torch dense {args.dtype}"])
    print(
        f"\nx [{args.rows}, {args.in_features}] {args.dtype} times W [{args.out_features}, "
        f"{args.in_features}]^T; median of {args.rounds} rounds of {args.iters} calls; "
        f"load average {os.getloadavg()}"
    )
    print(f"{'system':48} {'µs':>8} {'x dense':>8}")
    for key, values in results.items():
        us = statistics.median(values)
        print(f"{key:48} {us:8.1f} {us / base:8.2f}")


if __name__ == "__main__":
    main()
