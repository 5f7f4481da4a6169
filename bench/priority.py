"""Priority classes: interactive TTFT beside a large batch, and batch throughput alone.

    .venv/bin/python -m bench.priority [--batch-lines 2000] [--interactive 40] [--rate 1]
        [--rounds 3] [--old-rounds 1] [--throughput-rounds 2] [--dtype bf16]

One engine (the shipped SmolLM2-135M, the many-adapter benchmark's config: 64 seats, 16
LoRA slots, a 32,768-token KV cache) and, in one run, phases that take turns so the
box's other load falls on each alike:

- idle: the interactive load alone: `--interactive` requests on the base model, Poisson
  at `--rate`/s, prompts 64-256 tokens, 32 output tokens each;
- loaded: the same interactive load (same lengths and arrivals, its own prefix-cache
  scope) while a `--batch-lines` batch runs: every line (the many-adapter shape: 16
  adapters + base, prompts and outputs 64-256 tokens) is queued at batch priority 3 s
  before the first interactive arrival, so the batch fills every seat; when the last
  interactive request is done the lines still unanswered are aborted (the phase
  measures interactive latency beside a running batch, not the batch to its end);
- loaded, old policy (`--old-rounds`): the same with the batch caps off
  (batch_step_tokens = batch_tokens_with_interactive = 0: batch rows fill the whole
  step budget, as before the fix);
- throughput: the many-adapter workload (64 requests, all at once) at interactive
  priority, which is what bench/many_adapters.py measures, then the same at batch
  priority on the otherwise idle engine.

Prints TTFT p50/p99 per phase (pooled over rounds) with the ratio to idle, and batch
output tok/s against the many-adapter figure; CPU flags and load average with each.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import _engine_common as common
from bench._engine_common import Req, Trace


def interactive_load(n: int, rate: float, output: int, seed: int) -> list[Req]:
    shape = dict(prompt_len=(64, 256), output_len=(output, output))
    return common.workload(n, 0, rate=rate, seed=seed, **shape)


def generate_request(r: Req, prefix: str, scope: str, priority: int, adapter_ids):
    from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams

    adapters = () if r.adapter is None else (AdapterWeight(adapter_ids[r.adapter]),)
    sampling = SamplingParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True)
    return GenerateRequest(
        f"{prefix}{r.request_id}",
        r.prompt_ids,
        sampling,
        adapters,
        cache_scope=scope,
        priority=priority,
    )


def run_phase(engine, interactive, batch, adapter_ids, tag: str, lead_s: float = 3.0):
    """Interactive requests at their arrivals (after `lead_s` when a batch is queued
    first); returns the interactive trace and what the batch did meanwhile."""
    from ownllm.engine.messages import PRIORITY_BATCH, PRIORITY_INTERACTIVE

    origin = time.perf_counter()
    batch_ids = set()
    for r in batch:
        req = generate_request(r, f"{tag}-b-", f"{tag}-batch", PRIORITY_BATCH, adapter_ids)
        engine.add_request(req)
        batch_ids.add(req.request_id)
    lead = lead_s if batch else 0.0
    pending = sorted(interactive, key=lambda r: r.arrival)
    trace = Trace(arrivals={f"{tag}-i-{r.request_id}": r.arrival + lead for r in interactive})
    unfinished = set(trace.arrivals)
    batch_tokens = batch_done = 0
    t = 0.0
    while pending or unfinished:
        now = time.perf_counter() - origin
        while pending and pending[0].arrival + lead <= now:
            r = pending.pop(0)
            engine.add_request(
                generate_request(r, f"{tag}-i-", tag, PRIORITY_INTERACTIVE, adapter_ids)
            )
        if not engine.has_work():
            time.sleep(max(0.0, pending[0].arrival + lead - now))
            continue
        outputs = engine.step()
        t = time.perf_counter() - origin
        for out in outputs:
            if out.error is not None:
                raise out.error
            d = out.delta
            if d is None:
                continue
            if out.request_id in batch_ids:
                batch_tokens += len(d.token_ids)
                batch_done += d.finish_reason is not None
                continue
            if d.token_ids:
                trace.add(out.request_id, t, len(d.token_ids))
            if d.finish_reason is not None:
                unfinished.discard(out.request_id)
    for request_id in batch_ids:
        engine.abort_request(request_id)
    while engine.has_work():
        engine.step()
    return trace, {"lines_done": batch_done, "tokens": batch_tokens, "seconds": t}


def run_all_at_once(engine, reqs, adapter_ids, priority: int, tag: str) -> float:
    """The many-adapter workload, every request at t=0 at `priority`: output tok/s."""
    origin = time.perf_counter()
    for r in reqs:
        engine.add_request(generate_request(r, f"{tag}-", tag, priority, adapter_ids))
    tokens = 0
    while engine.has_work():
        for out in engine.step():
            if out.error is not None:
                raise out.error
            if out.delta is not None:
                tokens += len(out.delta.token_ids)
    return tokens / (time.perf_counter() - origin)


def set_caps(engine, step_tokens: int, beside: int) -> None:
    engine.scheduler.batch_step_tokens = step_tokens
    engine.scheduler.batch_tokens_with_interactive = beside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-lines", type=int, default=2000)
    parser.add_argument("--interactive", type=int, default=40, help="requests per phase")
    parser.add_argument("--rate", type=float, default=1.0, help="interactive arrivals, req/s")
    parser.add_argument("--interactive-output", type=int, default=32, help="tokens each")
    parser.add_argument("--rounds", type=int, default=3, help="idle + loaded rounds")
    parser.add_argument("--old-rounds", type=int, default=1, help="loaded, caps off")
    parser.add_argument("--throughput-rounds", type=int, default=2)
    parser.add_argument(
        "--throughput-requests", type=int, default=64, help="the many-adapter workload's size"
    )
    parser.add_argument("--throughput-output", default="64,256", help="its output lengths")
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from ownllm.config import EngineConfig
    from ownllm.engine.llm_engine import LLMEngine
    from ownllm.engine.messages import PRIORITY_BATCH, PRIORITY_INTERACTIVE
    from ownllm.gateway.capacity import cpu_flags

    model = common.model_dir()
    params = common.num_params(model)
    adapter_paths = common.make_adapters(model, args.adapters)
    common.print_header("priority classes", model, params, 64)
    print(f"CPU flags: {cpu_flags()}", flush=True)
    config = EngineConfig(
        max_num_seqs=64,
        max_loras=max(args.adapters, 1),
        kv_cache_tokens=64 * 512,
        max_queue=max(4096, 2 * args.batch_lines),
        max_queue_seqs=max(4096, 2 * args.batch_lines),
        max_queue_tokens=1 << 30,
    )
    engine = LLMEngine(model, config, dtype=common.engine_dtype(args.dtype))
    caps = (engine.scheduler.batch_step_tokens, engine.scheduler.batch_tokens_with_interactive)
    print(
        f"engine: max_num_seqs 64, max_num_batched_tokens {config.max_num_batched_tokens}, "
        f"batch_step_tokens {caps[0]}, batch_tokens_with_interactive {caps[1]}, "
        f"batch_full_after_steps {config.batch_full_after_steps}, KV 32,768 tokens, "
        f"{args.dtype}",
        flush=True,
    )
    ids = [f"a{i}" for i in range(args.adapters)]
    for adapter_id, path in zip(ids, adapter_paths):
        engine.load_adapter(adapter_id, str(path))
    shape = dict(prompt_len=(64, 256), output_len=(64, 256))
    batch = common.workload(args.batch_lines, args.adapters, seed=11, **shape)
    lo, _, hi = args.throughput_output.partition(",")
    many_shape = {**shape, "output_len": (int(lo), int(hi or lo))}
    # bench/many_adapters.py's workload (its size and output lengths unless told otherwise)
    many = common.workload(args.throughput_requests, args.adapters, seed=7, **many_shape)
    warm = common.workload(4, 2, prompt_len=(16, 16), output_len=(4, 4), seed=99)
    run_all_at_once(engine, warm, ids, PRIORITY_INTERACTIVE, "warm")
    print(
        f"interactive: {args.interactive} requests a phase, Poisson {args.rate}/s, prompts "
        f"64-256, {args.interactive_output} output tokens; batch: {args.batch_lines} lines "
        f"queued (prompts and outputs 64-256, {args.adapters} adapters + base); throughput: "
        f"{args.throughput_requests} requests, outputs {many_shape['output_len']}, all at once",
        flush=True,
    )

    ttft: dict[str, list[float]] = {"idle": [], "loaded": [], "loaded, old policy": []}
    batch_stats: dict[str, list[dict]] = {"loaded": [], "loaded, old policy": []}
    throughput: dict[str, list[float]] = {"interactive priority": [], "batch priority": []}

    def ttfts(trace: Trace) -> list[float]:
        return [(v[0] - trace.arrivals[k]) * 1e3 for k, v in trace.tokens.items() if v]

    phases = []
    for r in range(max(args.rounds, args.old_rounds, args.throughput_rounds)):
        if r < args.rounds:
            phases += [("idle", r), ("loaded", r)]
        if r < args.old_rounds:
            phases.append(("loaded, old policy", r))
        if r < args.throughput_rounds:
            phases += [("interactive priority", r), ("batch priority", r)]
    for name, r in phases:
        tag = f"{name.replace(' ', '').replace(',', '')}{r}"
        if name in throughput:
            priority = PRIORITY_BATCH if name == "batch priority" else PRIORITY_INTERACTIVE
            # an otherwise idle server: no interactive work for longer than
            # batch_full_after_steps (the interactive-priority run just before would count)
            engine.scheduler._quiet_steps = 1 << 62
            tok_s = run_all_at_once(engine, many, ids, priority, tag)
            throughput[name].append(tok_s)
            print(
                f"throughput, {name}, round {r}: {tok_s:.1f} output tok/s; load average "
                f"{common.load_average()}",
                flush=True,
            )
            continue
        load = interactive_load(args.interactive, args.rate, args.interactive_output, 100 + r)
        if name == "loaded, old policy":
            set_caps(engine, 0, 0)
        trace, stats = run_phase(engine, load, batch if name != "idle" else [], ids, tag)
        set_caps(engine, *caps)
        values = ttfts(trace)
        ttft[name] += values
        if name != "idle":
            batch_stats[name].append(stats)
        extra = (
            f"; batch: {stats['lines_done']} lines done, {stats['tokens']} tokens in "
            f"{stats['seconds']:.0f}s"
            if name != "idle"
            else ""
        )
        print(
            f"{name}, round {r}: TTFT p50 {common.percentile(values, 50):.0f} ms, p99 "
            f"{common.percentile(values, 99):.0f} ms ({len(values)} requests){extra}; "
            f"load average {common.load_average()}",
            flush=True,
        )

    print(f"\nCPU flags: {cpu_flags()}; load average {common.load_average()}")
    idle50 = common.percentile(ttft["idle"], 50)
    idle99 = common.percentile(ttft["idle"], 99)
    print(
        f"{'phase':<20}{'requests':>9}{'TTFT p50':>10}{'p99':>8}{'p50 x idle':>12}{'p99 x idle':>12}"
    )
    for name, values in ttft.items():
        if not values:
            continue
        p50, p99 = common.percentile(values, 50), common.percentile(values, 99)
        print(
            f"{name:<20}{len(values):>9}{p50:>10.0f}{p99:>8.0f}{p50 / idle50:>12.2f}"
            f"{p99 / idle99:>12.2f}"
        )
    print("(TTFT in ms, pooled over the rounds; target: loaded p99 <= 1.25 x idle)")
    for name, stats in batch_stats.items():
        if stats:
            lines = sum(s["lines_done"] for s in stats)
            tok = sum(s["tokens"] for s in stats)
            secs = sum(s["seconds"] for s in stats)
            print(
                f"batch beside interactive ({name}): {lines} lines done, "
                f"{tok / secs:.1f} output tok/s over {secs:.0f}s"
            )
    inter, bat = throughput["interactive priority"], throughput["batch priority"]
    if inter and bat:
        a, b = sum(inter) / len(inter), sum(bat) / len(bat)
        print(
            f"many-adapter workload alone: interactive priority {a:.1f} tok/s, batch priority "
            f"{b:.1f} tok/s = {b / a:.1%} (target >= 90%)"
        )


if __name__ == "__main__":
    main()
