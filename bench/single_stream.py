"""W1, single stream: one greedy request (128-token prompt, 128 output tokens) at a time.

    .venv/bin/python -m bench.single_stream [--reps 3] [--dtypes fp32,bf16] [--vllm-dtypes bf16]

Systems, all on the shipped default model (SmolLM2-135M-Instruct), in one run:
ownllm's LLMEngine driven step by step, the same through EmbeddedBackend (the
engine thread + asyncio hand-off that `ownllm serve` uses), HF transformers
`generate`, llama-cpp-python on the shipped Q4_1 GGUF (its own quantised
weights, so not the same arithmetic), and vLLM's CPU build in its own
virtualenv (a subprocess, after the in-process systems). The in-process systems
take turns within each repetition, so load on the shared machine hits them
alike; every repetition uses a fresh random prompt (no prefix-cache hits).

Prints per system: output tok/s (128 tokens over the time from submission to
the last token, prefill included; median over repetitions), TTFT and
inter-token latency p50, the ratio to HF `generate` in the same dtype, and the
share of the matmul roofline measured at the start of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import torch

from bench import _engine_common as common
from bench._engine_common import Req, Trace
from bench._hf_serving import load_hf, load_llama_cpp, run_engine, run_hf, run_llama_cpp


def run_backend(backend, req: Req) -> Trace:
    """One request through EmbeddedBackend.generate, timed at the consumer."""
    from ownllm.backends.base import GenerateRequest, SamplingParams

    async def go() -> Trace:
        trace = Trace(arrivals={req.request_id: 0.0})
        sampling = SamplingParams(max_tokens=req.max_tokens, temperature=0.0, ignore_eos=True)
        origin = time.perf_counter()
        async for delta in backend.generate(
            GenerateRequest(req.request_id, req.prompt_ids, sampling)
        ):
            trace.add(req.request_id, time.perf_counter() - origin, len(delta.token_ids))
        return trace

    return backend_loop.run_until_complete(go())


backend_loop = asyncio.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--vllm-dtypes", default="bf16", help="'' skips vLLM")
    parser.add_argument(
        "--vllm-cores",
        default="default",
        help="comma list: default (vLLM keeps one core for its scheduler), all (none kept)",
    )
    parser.add_argument("--skip", default="", help="comma list of: backend,hf,llama.cpp")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ownllm.backends.embedded import EmbeddedBackend
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    skip = set(filter(None, args.skip.split(",")))
    dtypes = [d for d in args.dtypes.split(",") if d]
    model = common.model_dir()
    params = common.num_params(model)
    flops = common.print_header("W1 single stream", model, params, 1)
    config = EngineConfig(max_num_seqs=8, kv_cache_tokens=4096)
    systems: dict[tuple[str, str], callable] = {}
    for d in dtypes:
        engine = LLMEngine(model, config, dtype=common.engine_dtype(d))
        systems[("ownllm engine", d)] = lambda r, e=engine: run_engine(e, [r])
        if "backend" not in skip:
            backend = EmbeddedBackend(model, "bench", config, dtype=common.engine_dtype(d))
            systems[("ownllm backend", d)] = lambda r, b=backend: run_backend(b, r)
        if "hf" not in skip:
            hf = load_hf(model, common.dtype_of(d))
            systems[("HF generate", d)] = lambda r, m=hf: run_hf(m, [r])
    if "llama.cpp" not in skip:
        try:
            llm = load_llama_cpp(common.shipped_gguf())
            systems[("llama.cpp", "Q4_1")] = lambda r: run_llama_cpp(llm, r)
        except ImportError:
            print("llama.cpp: llama-cpp-python is not installed (make bench-deps)")
    rng = random.Random(1234)

    def request(name: str, length: int, max_tokens: int) -> Req:
        return Req(name, common.random_prompt(rng, length, 49152), max_tokens)

    warm = request("warm", 32, 8)
    for run in systems.values():
        run(warm)
    results: dict[tuple[str, str], list] = {k: [] for k in systems}
    for rep in range(args.reps):
        req = request(f"w1-{rep}", args.prompt_len, args.max_tokens)
        for key, run in systems.items():
            results[key].append(common.summarise(run(req)))
        print(f"rep {rep + 1}/{args.reps} done; load average {common.load_average()}", flush=True)
    for d in filter(None, args.vllm_dtypes.split(",")):
        for cores in filter(None, args.vllm_cores.split(",")):
            env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if cores == "all" else {}
            reqs = {
                f"rep{i}": [request(f"v{i}", args.prompt_len, args.max_tokens)]
                for i in range(args.reps)
            }
            warm = [request("vwarm", 32, 8)]
            traces, note = common.run_vllm(model, d, reqs, warmup=warm, env=env)
            print(f"vLLM {d}, {cores} cores: {note}")
            if traces:
                name = "vLLM CPU" + (" (all cores)" if cores == "all" else "")
                results[(name, d)] = [common.summarise(t) for t in traces.values()]
    rows = []
    for (name, d), sums in results.items():
        tok_s = statistics.median(s.tok_s for s in sums)
        hf = results.get(("HF generate", d))
        rows.append(
            {
                "system": name,
                "dtype": d,
                "tok_s": tok_s,
                "ttft": statistics.median(s.ttft_p50 for s in sums),
                "itl": statistics.median(s.itl_p50 for s in sums),
                "vs_hf": tok_s / statistics.median(s.tok_s for s in hf) if hf else None,
                "roof": common.roofline_fraction(params, tok_s, flops.get(d, flops["fp32"])),
            }
        )
    print(
        f"\n{args.prompt_len}-token prompt, {args.max_tokens} output tokens, greedy, "
        f"median of {args.reps}; load average {common.load_average()}"
    )
    common.print_table(
        rows,
        [
            ("system", "system", ""),
            ("dtype", "dtype", ""),
            ("tok_s", "out tok/s", ".1f"),
            ("ttft", "TTFT ms", ".1f"),
            ("itl", "ITL p50 ms", ".2f"),
            ("vs_hf", "x HF", ".2f"),
            ("roof", "roofline", ".2%"),
        ],
    )


if __name__ == "__main__":
    main()
