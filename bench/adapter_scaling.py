"""W3, adapter scaling: W2's workload with 1, 8, 64 and 512 distinct adapters in the mix.

    .venv/bin/python -m bench.adapter_scaling [--counts 1,8,64,512] [--requests 64]
        [--prompt-len 64,256] [--output-len 64,256] [--dtype bf16] [--max-loras 64]

Every request carries an adapter (round robin over N random rank-8 q,k,v,o
adapters; max(--requests, N) requests, so all N are in the mix), arriving all
at once. The engine config is the same for every N (`--max-loras` resident
slots; more adapters than slots are swapped in LRU order, re-read from disk
once they fall out of the engine's host cache). Each N runs in a fresh
subprocess so its resident memory (RSS) is its own: after loading the model,
after registering the N adapters, and at the end of the run. Prints output
tok/s, TTFT/ITL, the ratio to the 1-adapter run, and the roofline share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from bench import _engine_common as common
from bench._hf_serving import run_engine


def pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def one(args: argparse.Namespace, count: int) -> dict:
    """Run the workload with `count` adapters in this process; a JSON-able result."""
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    model = common.model_dir()
    paths = common.make_adapters(model, count)
    rss_start = common.rss_mib()
    config = EngineConfig(
        max_num_seqs=64, max_loras=args.max_loras, max_lora_rank=8, kv_cache_tokens=64 * 512
    )
    engine = LLMEngine(model, config, dtype=common.engine_dtype(args.dtype))
    rss_model = common.rss_mib()
    ids = [f"a{i}" for i in range(count)]
    for adapter_id, path in zip(ids, paths):
        engine.load_adapter(adapter_id, str(path))
    rss_adapters = common.rss_mib()
    warm = common.workload(2, 1, prompt_len=(16, 16), output_len=(4, 4), include_base=False)
    run_engine(engine, warm, ids)
    reqs = common.workload(
        max(args.requests, count),
        count,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        include_base=False,
        seed=11,
    )
    s = common.summarise(run_engine(engine, reqs, ids))
    lora_bytes = sum(
        t.numel() * t.element_size()
        for stacks in (engine.lora.a, engine.lora.b)
        for layer in stacks
        for t in layer.values()
    )
    return {
        "count": count,
        "requests": len(reqs),
        "tok_s": s.tok_s,
        "wall": s.wall,
        "ttft50": s.ttft_p50,
        "ttft99": s.ttft_p99,
        "itl50": s.itl_p50,
        "itl99": s.itl_p99,
        "rss_start": rss_start,
        "rss_model": rss_model,
        "rss_adapters": rss_adapters,
        "rss_end": common.rss_mib(),
        "lora_slots_mib": lora_bytes / 2**20,
        "load": common.load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,8,64,512")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=pair, default=(64, 256))
    parser.add_argument("--output-len", type=pair, default=(64, 256))
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--max-loras", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print("RESULT " + json.dumps(one(args, args.one)), flush=True)
        return
    model = common.model_dir()
    params = common.num_params(model)
    print(f"W3 adapter scaling; {common.machine_line()}")
    flops = common.matmul_flops(common.dtype_of(args.dtype))
    print(
        f"model {model.name}: {params / 1e6:.1f}M matmul params, {args.dtype}; matmul roofline "
        f"{flops / 1e9:.0f} GFLOP/s; engine max_loras {args.max_loras}, prompts "
        f"{args.prompt_len}, outputs {args.output_len}, all arrivals at once",
        flush=True,
    )
    rows = []
    for count in [int(c) for c in args.counts.split(",") if c]:
        common.make_adapters(model, count)  # written before the timed child starts
        cmd = [sys.executable, "-m", "bench.adapter_scaling", "--one", str(count)]
        for flag in ("requests", "dtype", "max_loras", "threads"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += ["--prompt-len", "{},{}".format(*args.prompt_len)]
        cmd += ["--output-len", "{},{}".format(*args.output_len)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{count} adapters failed:\n{out.stderr[-2000:]}")
            continue
        row = json.loads(line.removeprefix("RESULT "))
        row["roof"] = common.roofline_fraction(params, row["tok_s"], flops)
        rows.append(row)
        print(
            f"{count} adapters: {row['tok_s']:.1f} tok/s ({row['wall']:.0f}s); "
            f"load average {row['load']}",
            flush=True,
        )
    base = next((r["tok_s"] for r in rows if r["count"] == 1), None)
    for r in rows:
        r["vs_1"] = r["tok_s"] / base if base else None
        r["adapters_mib"] = r["rss_adapters"] - r["rss_model"]
    print(f"\nload average {common.load_average()}")
    common.print_table(
        rows,
        [
            ("count", "adapters", ""),
            ("requests", "requests", ""),
            ("tok_s", "out tok/s", ".1f"),
            ("vs_1", "x 1-adapter", ".2f"),
            ("ttft50", "TTFT p50", ".0f"),
            ("ttft99", "TTFT p99", ".0f"),
            ("itl50", "ITL p50", ".1f"),
            ("itl99", "ITL p99", ".1f"),
            ("roof", "roofline", ".1%"),
            ("rss_model", "RSS model", ".0f"),
            ("adapters_mib", "+adapters", ".0f"),
            ("rss_end", "RSS end", ".0f"),
            ("lora_slots_mib", "slots MiB", ".1f"),
        ],
    )
    print(
        "(TTFT and ITL in ms; RSS in MiB: after model load, added by registering the "
        "adapters, at the end; slots: the resident LoRA stacks)"
    )


if __name__ == "__main__":
    main()
