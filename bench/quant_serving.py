"""Quantised serving on CPU: single stream 128 -> 128 by `model.quantization`, against the
dense engine and llama.cpp on the same GGUF, with RSS after load and the fraction of the
memory-bandwidth roofline.

    .venv/bin/python -m bench.quant_serving [--reps 3] [--configs bf16,fp32,bf16:auto,...]

A config is DTYPE[:QUANTIZATION[:i8]] (dtype fp32 or bf16; quantization none, auto,
q4_1, q4_0, q8_0, int8; `:i8` adds `engine.quant_activations = int8`, x rounded to int8
blocks for integer dot products). `auto` on the shipped SmolLM2 GGUF is the file's own mix, q4_1
layers and a q8_0 embedding / tied output head: the weights llama.cpp runs.

Per config: output tok/s of one greedy stream (128-token random prompt, 128 tokens,
EOS ignored, the time from submission to the last token, median of --reps; the
systems take turns within each repetition so the shared box's load hits them alike),
which counts the prompt's prefill (TTFT) as well; the decode alone is the ITL p50, and
"decode x llama.cpp" is llama.cpp's ITL p50 over the system's;
the weight bytes a decode step reads (every linear layer and the output head, in
their stored form); that times tok/s over the copy bandwidth measured at the start
of the run (torch `copy_` of 256 MiB, read + write bytes per second) is the fraction
of the memory-bandwidth roofline; RSS after load is measured in a fresh process per
config (the engine with a 4096-token KV cache, the tokenizer, torch itself), and again with
32,768 more KV tokens: the difference over 32,768 is the RSS a KV token costs, beside
the bytes the engine's cache holds a token (`kv_caches.nbytes` over its tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import torch

from bench import _engine_common as common
from bench._engine_common import Req
from bench._hf_serving import load_llama_cpp, run_engine, run_llama_cpp

KV_TOKENS = 4096
MORE_KV_TOKENS = 32768


def copy_bandwidth(mib: int = 256, reps: int = 5) -> float:
    """Bytes per second a torch copy moves (read + write), best of `reps`."""
    src = torch.ones(mib << 18)  # float32: mib MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def weight_bytes(engine) -> int:
    """Bytes of the weights one decode step reads: linear layers and the output head."""
    from ownllm.engine.model import QuantLinear

    total = 0
    linears = [engine.model.lm_head]
    for layer in engine.model.layers:
        linears += [layer.qkv, layer.o, layer.gate_up, layer.down]
    for lin in linears:
        if isinstance(lin, QuantLinear):
            total += lin.weight.nbytes
        else:
            total += lin.out_features * lin.in_features * engine.dtype.itemsize
    return total


def build(model, config: str, kv_tokens: int = KV_TOKENS):
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine

    dtype, _, quant = config.partition(":")
    quant, _, activations = quant.partition(":")
    engine_config = EngineConfig(
        max_num_seqs=8,
        kv_cache_tokens=kv_tokens,
        quant_activations="int8" if activations == "i8" else "float",
    )
    return LLMEngine(
        model, engine_config, dtype=common.engine_dtype(dtype), quantization=quant or "none"
    )


def rss_after_load(config: str, kv_tokens: int = KV_TOKENS) -> tuple[float, float]:
    """RSS in MiB of a fresh process that has built the engine for `config` with
    `kv_tokens` of KV cache, and the bytes its cache holds a token."""
    code = (
        "import json,sys; from bench import _engine_common as c; "
        "from bench.quant_serving import build; "
        "e = build(c.model_dir(), sys.argv[1], int(sys.argv[2])); "
        "kv = e.runner.kv_caches; tokens = kv.shape[2] * kv.shape[3]; "
        "print(json.dumps([c.rss_mib(), kv.nbytes / tokens]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, config, str(kv_tokens)],
        capture_output=True,
        text=True,
        check=True,
    )
    rss, per_token = json.loads(out.stdout.strip().splitlines()[-1])
    return rss, per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--configs", default="bf16,fp32,bf16:auto,fp32:auto,bf16:q8_0,bf16:int8")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = common.model_dir()
    params = common.num_params(model)
    common.print_header("quantised single stream", model, params, 1)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write, torch copy_ of 256 MiB)")
    configs = [c for c in args.configs.split(",") if c]
    systems, read_bytes, paths = {}, {}, {}
    for config in configs:
        engine = build(model, config)
        systems[config] = lambda r, e=engine: run_engine(e, [r])
        read_bytes[config] = weight_bytes(engine)
        paths[config] = engine.quantization + " / " + engine.model.ops.describe()
    try:
        llm = load_llama_cpp(common.shipped_gguf())
        systems["llama.cpp Q4_1 GGUF"] = lambda r: run_llama_cpp(llm, r)
        read_bytes["llama.cpp Q4_1 GGUF"] = common.shipped_gguf().stat().st_size
        paths["llama.cpp Q4_1 GGUF"] = "its own kernels"
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed (make bench-deps)")
    rng = random.Random(1234)
    warm = Req("warm", common.random_prompt(rng, 32, 49152), 8)
    for run in systems.values():
        run(warm)
    results: dict[str, list] = {k: [] for k in systems}
    for rep in range(args.reps):
        req = Req(f"q-{rep}", common.random_prompt(rng, args.prompt_len, 49152), args.max_tokens)
        for key, run in systems.items():
            results[key].append(common.summarise(run(req)))
        print(f"rep {rep + 1}/{args.reps} done; load average {common.load_average()}", flush=True)
    rss, kv_rss, kv_bytes = {}, {}, {}
    if not args.skip_rss:
        for config in configs:
            rss[config], kv_bytes[config] = rss_after_load(config)
            more, _ = rss_after_load(config, KV_TOKENS + MORE_KV_TOKENS)
            kv_rss[config] = (more - rss[config]) * 1024 / MORE_KV_TOKENS
    llama = results.get("llama.cpp Q4_1 GGUF")
    llama_tok_s = statistics.median(s.tok_s for s in llama) if llama else None
    llama_itl = statistics.median(s.itl_p50 for s in llama) if llama else None
    base_tok_s = statistics.median(s.tok_s for s in results[configs[0]])
    rows = []
    for key, sums in results.items():
        tok_s = statistics.median(s.tok_s for s in sums)
        rows.append(
            {
                "system": key,
                "weights": paths[key],
                "tok_s": tok_s,
                "ttft": statistics.median(s.ttft_p50 for s in sums),
                "itl": statistics.median(s.itl_p50 for s in sums),
                "itl_vs_llama": llama_itl / statistics.median(s.itl_p50 for s in sums)
                if llama_itl
                else None,
                "vs_base": tok_s / base_tok_s,
                "vs_llama": tok_s / llama_tok_s if llama_tok_s else None,
                "mb": read_bytes[key] / 1e6,
                "bw": read_bytes[key] * tok_s / bandwidth,
                "rss": rss.get(key),
                "kv_rss": kv_rss.get(key),
                "kv_bytes": kv_bytes[key] / 1024 if key in kv_bytes else None,
            }
        )
    print(
        f"\n{args.prompt_len}-token prompt, {args.max_tokens} output tokens, greedy, median of "
        f"{args.reps}; x base is against {configs[0]}; load average {common.load_average()}"
    )
    common.print_table(
        rows,
        [
            ("system", "system", ""),
            ("weights", "weights / kernels", ""),
            ("tok_s", "out tok/s", ".1f"),
            ("ttft", "TTFT ms", ".0f"),
            ("itl", "ITL p50 ms", ".2f"),
            ("itl_vs_llama", "decode x llama.cpp", ".2f"),
            ("vs_base", "x base", ".2f"),
            ("vs_llama", "x llama.cpp", ".2f"),
            ("mb", "MB/token", ".0f"),
            ("bw", "of bandwidth", ".1%"),
            ("rss", "RSS MiB", ".0f"),
            ("kv_rss", "RSS KiB/KV token", ".1f"),
            ("kv_bytes", "cache KiB/KV token", ".1f"),
        ],
    )


if __name__ == "__main__":
    main()
