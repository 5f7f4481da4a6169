"""The quantised linear layers of one decoder layer at batch sizes: the batched kernel
(`quant_gemm`), the decode kernel (`quant_matmul`, up to 16 rows), the dequantised tiles
through torch's GEMM (the path above 16 rows before the batched kernel), and the dense
layer prepacked for oneDNN (`engine.model.Linear`), in one run.

    .venv/bin/python -m bench.quant_layer [--rows 2,4,8,16,17,32,64,128,256,1024]
        [--dtype bf16] [--qtype q4_1] [--threads 2] [--head]

Shapes: the shipped SmolLM2-135M's qkv [960, 576], o [576, 576], gate_up [3072, 576] and
down [576, 1536]; `--head` adds the tied output head [49152, 576] in q8_0 (the GGUF's own
type) as its own row. Weights are random, quantised once; x random. Each cell is the sum
over the shapes of the best of 5 timings of a loop of calls (about 50 ms each), the
systems taking turns per shape so the shared box's load hits them alike; the ratios are to
the dense layer.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from bench.quant_kernel import cpu_flags
from ownllm.engine import cpu_kernels
from ownllm.engine.model import Linear
from ownllm.formats.quant import quantize

LAYER = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate_up, down
HEAD = (49152, 576)


def best_us(fn) -> float:
    """Best of 5 timings of a loop of fn() calls (about 50 ms each), microseconds a call."""
    fn()
    start = time.perf_counter()
    fn()
    calls = max(3, int(0.05 / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def tiles(kernels, x: torch.Tensor, w) -> torch.Tensor:
    """The path above 16 rows before the batched kernel (ops.CKernelOps.quant_linear): W
    dequantised a tile of 2^21 weights at a time, each tile through F.linear."""
    rows = max(1, (1 << 21) // w.in_features)
    out = torch.empty(x.shape[0], w.out_features, dtype=x.dtype)
    for start in range(0, w.out_features, rows):
        stop = min(start + rows, w.out_features)
        out[:, start:stop] = F.linear(x, kernels.quant_dequantize(w.rows(slice(start, stop))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2,4,8,16,17,32,64,128,256,1024")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--qtype", default="q4_1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head", action="store_true", help="also the q8_0 output head")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    kernels = cpu_kernels.load(dtype, torch.device("cpu"), 9, 3)
    if kernels is None or kernels.quant_gemm_path is None:
        raise SystemExit("the C kernels with quant_gemm are needed (see the log)")
    print(
        f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {args.threads} threads; "
        f"quant_gemm {kernels.quant_gemm_path}; load average {os.getloadavg()}"
    )
    gen = torch.Generator().manual_seed(0)
    groups = {f"layer {args.qtype}": [(s, args.qtype) for s in LAYER]}
    if args.head:
        groups["head q8_0"] = [(HEAD, "q8_0")]
    print(
        f"{'weights':14} {'rows':>5} {'gemm µs':>9} {'kernel µs':>9} {'tiles µs':>9} "
        f"{'dense µs':>9} {'gemm/dense':>10} {'kernel/dense':>12} {'tiles/dense':>11}"
    )
    for group, shapes in groups.items():
        made = []
        for shape, qtype in shapes:
            dense = torch.randn(*shape, generator=gen) * 0.02
            made.append((quantize(dense, qtype), Linear(dense.to(dtype))))
        for num_rows in (int(r) for r in args.rows.split(",")):
            total = {"gemm": 0.0, "kernel": 0.0, "tiles": 0.0, "dense": 0.0}
            for w, lin in made:
                x = torch.randn(num_rows, w.in_features, generator=gen).to(dtype)
                total["gemm"] += best_us(lambda x=x, w=w: kernels.quant_gemm(x, w))
                if num_rows <= 16:
                    total["kernel"] += best_us(lambda x=x, w=w: kernels.quant_matmul(x, w))
                total["tiles"] += best_us(lambda x=x, w=w: tiles(kernels, x, w))
                total["dense"] += best_us(lambda x=x, lin=lin: lin(x))
            g, k, t, d = (total[key] for key in ("gemm", "kernel", "tiles", "dense"))
            kernel = (f"{k:9.0f}", f"{k / d:12.2f}") if k else (f"{'—':>9}", f"{'—':>12}")
            print(
                f"{group:14} {num_rows:5d} {g:9.0f} {kernel[0]} {t:9.0f} {d:9.0f} "
                f"{g / d:10.2f} {kernel[1]} {t / d:11.2f}",
                flush=True,
            )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
