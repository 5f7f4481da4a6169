"""W2, many adapters: 64 requests over 16 rank-8 adapters + the base model.

    .venv/bin/python -m bench.many_adapters [--requests 64] [--output-len 64,256]
        [--arrivals all,poisson] [--rate 2] [--dtypes fp32,bf16,bf16:auto]
        [--baselines grouped-fp32,mixed-fp32,mixed-bf16] [--baseline-arrivals all,poisson]

Prompts and outputs are uniform in 64–256 tokens (greedy, EOS ignored), each
request on one of the adapters or the base model (round robin); they arrive
all at once, or as a Poisson stream at `--rate` requests/s. Systems, in one run:
ownllm's LLMEngine (continuous batching, every adapter in one batch), HF + PEFT
grouped (one adapter active at a time, batching the requests that share it),
HF + PEFT mixed batch (`adapter_names`), and vLLM's CPU build (subprocess, after
the rest). The in-process systems take turns per arrival pattern. Adapters are
random (seeded, non-zero B) on q, k, v and o.

Prints aggregate output tok/s (all output tokens over the time from the first
arrival to the last token), TTFT and inter-token latency p50/p99, the ratio to
the strongest baseline under the same arrivals, and the share of the matmul
roofline measured at the start of the run.

An ownllm system is DTYPE[:QUANTIZATION]: `bf16:auto` serves the base in the shipped
GGUF's own quantised blocks (`model.quantization`), `bf16:q4_1` everything in q4_1; the
adapters stay in the compute dtype on top.
"""

from __future__ import annotations

import argparse

import torch

from bench import _engine_common as common
from bench._hf_serving import load_hf, run_engine, run_hf


def pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--prompt-len", type=pair, default=(64, 256))
    parser.add_argument("--output-len", type=pair, default=(64, 256))
    parser.add_argument("--arrivals", default="all,poisson")
    parser.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals, req/s")
    parser.add_argument(
        "--dtypes",
        default="fp32,bf16",
        help="ownllm engines, DTYPE[:QUANTIZATION] (fp32 or bf16; none, auto, q4_1, q8_0, ...)",
    )
    parser.add_argument(
        "--baselines",
        default="grouped-fp32,mixed-fp32,mixed-bf16",
        help="HF + PEFT runs, MODE-DTYPE (grouped or mixed; fp32 or bf16)",
    )
    parser.add_argument("--baseline-arrivals", default="all,poisson")
    parser.add_argument("--vllm-dtypes", default="bf16", help="'' skips vLLM")
    parser.add_argument("--vllm-cores", choices=("default", "all"), default="default")
    parser.add_argument("--base-only", action="store_true", help="also run without adapters")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    model = common.model_dir()
    params = common.num_params(model)
    adapters = common.make_adapters(model, args.adapters)
    flops = common.print_header("W2 many adapters", model, params, 64)
    patterns = [p for p in args.arrivals.split(",") if p]
    shape = dict(prompt_len=args.prompt_len, output_len=args.output_len, seed=7)
    loads = {
        p: common.workload(
            args.requests, args.adapters, rate=args.rate if p == "poisson" else 0.0, **shape
        )
        for p in patterns
    }
    if args.base_only:
        loads["all, base only"] = common.workload(args.requests, 0, **{**shape, "seed": 8})
    warm = common.workload(4, 2, prompt_len=(16, 16), output_len=(4, 4), seed=99)
    tokens = sum(r.max_tokens for r in loads[patterns[0]])
    print(
        f"{args.requests} requests over {args.adapters} adapters + base, prompts "
        f"{args.prompt_len}, outputs {args.output_len} ({tokens} output tokens), "
        f"Poisson rate {args.rate}/s",
        flush=True,
    )
    config = EngineConfig(
        max_num_seqs=64, max_loras=max(args.adapters, 1), kv_cache_tokens=64 * 512
    )
    systems = {}
    for d in filter(None, args.dtypes.split(",")):
        dtype, _, quant = d.partition(":")
        engine = LLMEngine(
            model, config, dtype=common.engine_dtype(dtype), quantization=quant or "none"
        )
        ids = [f"a{i}" for i in range(args.adapters)]
        for adapter_id, path in zip(ids, adapters):
            engine.load_adapter(adapter_id, str(path))
        systems[("ownllm engine", d)] = lambda reqs, e=engine, ids=ids: run_engine(e, reqs, ids)
    peft_models = {}
    for spec in filter(None, args.baselines.split(",")):
        mode, d = spec.split("-")
        if d not in peft_models:
            peft_models[d] = load_hf(model, common.dtype_of(d), adapters)
        systems[(f"HF+PEFT {mode}", d)] = lambda reqs, m=peft_models[d], mode=mode: run_hf(
            m, reqs, mode
        )
    for run in systems.values():
        run(warm)
    results: dict[tuple[str, str, str], common.Summary] = {}
    for pattern, reqs in loads.items():
        for (name, d), run in systems.items():
            if "base only" in pattern and name != "ownllm engine":
                continue
            if name.startswith("HF") and pattern not in args.baseline_arrivals.split(","):
                continue
            s = common.summarise(run(reqs))
            results[(name, d, pattern)] = s
            print(
                f"{name} {d} {pattern}: {s.tok_s:.1f} tok/s ({s.wall:.0f}s); "
                f"load average {common.load_average()}",
                flush=True,
            )
    for d in filter(None, args.vllm_dtypes.split(",")):
        env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if args.vllm_cores == "all" else {}
        traces, note = common.run_vllm(
            model, d, loads, adapters, max_loras=args.adapters, warmup=warm, env=env
        )
        print(f"vLLM {d}: {note}")
        for pattern, trace in traces.items():
            results[("vLLM CPU", d, pattern)] = common.summarise(trace)
    print(f"\nload average {common.load_average()}")
    rows = []
    for (name, d, pattern), s in results.items():
        best = max(
            (v.tok_s for (n, _, p), v in results.items() if p == pattern and "ownllm" not in n),
            default=None,
        )
        rows.append(
            {
                "system": name,
                "dtype": d,
                "arrivals": pattern,
                "tok_s": s.tok_s,
                "ttft50": s.ttft_p50,
                "ttft99": s.ttft_p99,
                "itl50": s.itl_p50,
                "itl99": s.itl_p99,
                "vs_best": s.tok_s / best if best and "ownllm" in name else None,
                "roof": common.roofline_fraction(params, s.tok_s, flops[d.partition(":")[0]]),
            }
        )
    common.print_table(
        rows,
        [
            ("system", "system", ""),
            ("dtype", "dtype", ""),
            ("arrivals", "arrivals", ""),
            ("tok_s", "out tok/s", ".1f"),
            ("ttft50", "TTFT p50", ".0f"),
            ("ttft99", "TTFT p99", ".0f"),
            ("itl50", "ITL p50", ".1f"),
            ("itl99", "ITL p99", ".1f"),
            ("vs_best", "x best base", ".2f"),
            ("roof", "roofline", ".1%"),
        ],
    )
    print("(TTFT and ITL in ms; 'x best base': over the strongest baseline, same arrivals)")


if __name__ == "__main__":
    main()
