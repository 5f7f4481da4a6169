"""Where one decode step's time goes: the engine on one greedy stream, each part timed.

    .venv/bin/python -m bench.decode_split [--configs bf16:auto,bf16:auto:i8] [--threads 1]

A config is DTYPE[:QUANTIZATION[:i8]] as in `bench.quant_serving`. One stream (a
128-token random prompt, then --max-tokens decode steps, EOS ignored); only the decode
steps are counted. Each part is wall time around the calls, summed over the steps and
divided by their number (ms per step):

- the decoder layers' linear layers (qkv, o, gate_up, down) and the output head apart
  (the quantised kernels where `model.quantization` is set);
- attention (rotary + KV-cache write + decode attention), the norms (residual add +
  RMSNorm), SiLU·up, the embedding rows;
- the rest of the forward: the Python of the layer loop, torch's own small ops;
- outside the forward: the step's tensors (`ModelRunner.prepare`), sampling and
  detokenising (`_postprocess`), and the scheduler and the rest of `LLMEngine.step`.

The timers add two `perf_counter` calls around each of about 300 calls a step (well
under 0.1 ms). Run it on a quiet box: a part's time grows with the load.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict

import torch

from bench import _engine_common as common
from bench.quant_serving import build

PARTS = (
    ("layer linears", "decoder layers' qkv, o, gate_up, down"),
    ("output head", "lm_head (tied embedding)"),
    ("attention", "rotary + KV write + decode attention"),
    ("norms", "residual add + RMSNorm"),
    ("silu_mul", "SiLU(gate) * up"),
    ("embedding", "the step's embedding rows"),
    ("forward rest", "the layer loop's Python, small torch ops"),
    ("prepare", "ModelRunner.prepare: the step's tensors"),
    ("sample", "_postprocess: sampler, detokeniser, deltas"),
    ("step rest", "scheduler, inbox, the rest of step()"),
)


class Timers:
    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.on = False

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[part] += time.perf_counter() - start

        return timed


def instrument(engine, timers: Timers) -> None:
    """Wrap the engine's parts in timers (instance attributes shadow the methods)."""
    model = engine.model
    for layer in model.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            setattr(layer, name, timers.wrap("layer linears", getattr(layer, name)))
    model.lm_head = timers.wrap("output head", model.lm_head)
    ops = model.ops
    ops.attention = timers.wrap("attention", ops.attention)
    ops.add_rms_norm = timers.wrap("norms", ops.add_rms_norm)
    ops.silu_mul = timers.wrap("silu_mul", ops.silu_mul)
    ops.dequantize = timers.wrap("embedding", ops.dequantize)
    model.forward = timers.wrap("forward", model.forward)
    engine.runner.prepare = timers.wrap("prepare", engine.runner.prepare)
    engine._postprocess = timers.wrap("sample", engine._postprocess)


def split(engine, prompt: list[int], max_tokens: int) -> tuple[dict[str, float], int]:
    from ownllm.backends.base import GenerateRequest, SamplingParams

    timers = Timers()
    instrument(engine, timers)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    engine.add_request(GenerateRequest("split", prompt, sampling, ()))
    engine.step()  # the prompt (and the first token)
    timers.on = True
    steps = 0
    while engine.has_work():
        start = time.perf_counter()
        engine.step()
        timers.total["step"] += time.perf_counter() - start
        steps += 1
    t = timers.total
    inner = sum(t[p] for p in ("layer linears", "output head", "attention", "norms"))
    inner += t["silu_mul"] + t["embedding"]
    t["forward rest"] = t["forward"] - inner
    t["step rest"] = t["step"] - t["forward"] - t["prepare"] - t["sample"]
    return {k: v * 1e3 / steps for k, v in t.items()}, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="bf16:auto,bf16:auto:i8")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = common.model_dir()
    print(
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    prompt = common.random_prompt(random.Random(1234), args.prompt_len, 49152)
    results = {}
    for config in args.configs.split(","):
        engine = build(model, config)
        split(engine, prompt[:32], 8)  # warm-up: caches, allocator, kernels loaded
        results[config], steps = split(engine, prompt, args.max_tokens)
        del engine
    print(f"\nms per decode step ({steps} steps); load average {os.getloadavg()[0]:.2f} at end")
    configs = list(results)
    print("| part | " + " | ".join(configs) + " |")
    print("|---|" + "---|" * len(configs))
    for part, what in PARTS:
        cells = [
            f"{results[c][part]:.2f} ({results[c][part] / results[c]['step']:.0%})" for c in configs
        ]
        print(f"| {part}: {what} | " + " | ".join(cells) + " |")
    print("| **step** | " + " | ".join(f"**{results[c]['step']:.2f}**" for c in configs) + " |")


if __name__ == "__main__":
    main()
