"""Routing quality at scale, by discrete-event simulation: the affinity router against round
robin and least-loaded, on the same workload, the same replicas and the same seed.

No engine runs. Each replica is modelled on the embedded engine's measured figures
(bench/RESULTS.md, W1 and W2, bf16 on this 2-CPU box):
- a step costs STEP_BASE_S + STEP_PER_SEQ_S per decoding sequence + PREFILL_S per prompt
  token prefilled in it: 23 ms for one sequence (W1: ITL p50 22.9-27 ms, ~40 tok/s), 170
  ms for 64 (W2: 382 output tok/s at 64 sequences), 0.83 ms a prompt token (the linear
  layers' 1,200 tok/s at 64 tokens a step); prefill is chunked at 1,024 tokens a step;
- at most 64 sequences run (engine.max_num_seqs) within a KV cache of 32,768 tokens
  (W3's cache), admitted first come first served;
- a prefix cache of 16-token blocks keyed on (tenant, adapter) as the engine keys it, LRU
  over the blocks no running sequence holds: a prompt's leading cached blocks are not
  prefilled again;
- `--lora-slots` resident adapters (LRU over the slots no running sequence uses); loading
  one adds `--adapter-load-ms` to the step (an assumption: no benchmark measures a single
  load; W3's host-cache misses put it at tens of ms).

The workload: `--adapters` adapters (1,000) with Zipf popularity (`--zipf`), each owned by
one of `--tenants` tenants and with its own system prompt (200-800 tokens); sessions arrive
as a Poisson process and run 1-7 turns (mean 4); each turn's prompt is the whole
conversation so far plus a new user message (20-120 tokens), answered with 32-256 tokens;
the next turn follows an exponential think time (mean 3 s) after the answer. The arrival
rate is `--load` times the cluster's capacity at the mean request size.

The router is the real one: a `Router` (ownllm.gateway.routing) over stand-in replicas,
whose `route()` picks — the same scoring, prefix and adapter indexes and bookkeeping as
in `ownllm serve`. Its load view is what a gateway has: the requests it has in flight on
each replica at once, which of them have no first token yet (`Router.started` at the end
of the step that produced it), which answers ended when (`Router.finished`), the replica's
queue and KV use as of the last scrape (`--scrape-s`); its clock is the simulated time.

Reported per strategy: prefix-cache hit rate (prompt tokens served from cache / all prompt
tokens), adapter loads per 1,000 requests, queueing p50/p99 (arrival to admission in a
replica's batch), TTFT p99, and goodput (requests per second whose TTFT met `--slo-s`).

    python -m bench.routing_sim                     # 8, 16, 32, 64 replicas
    python -m bench.routing_sim --replicas 16 --requests-per-replica 400
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import os
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ownllm.backends.base import AdapterWeight, GenerateRequest, ModelInfo, SamplingParams
from ownllm.config import RoutingConfig
from ownllm.gateway.routing import Replica, Router
from ownllm.gateway.routing.prefix import prefix_hashes
from ownllm.gateway.routing.router import cache_scope

STEP_BASE_S = 0.023
STEP_PER_SEQ_S = 0.0023
PREFILL_S = 0.00083
PREFILL_CHUNK = 1024
MAX_SEQS = 64
KV_TOKENS = 32_768
BLOCK = 16
STRATEGIES = ("affinity", "round_robin", "least_loaded")


# -- the workload ------------------------------------------------------------------------------


@dataclass
class Session:
    tenant: str
    adapter: str
    history: list[int]  # the conversation's token ids so far
    turns_left: int


@dataclass
class Req:
    id: int
    session: Session
    prompt: list[int]
    num_output: int
    arrived: float
    admitted: float = -1.0
    first_token: float = -1.0
    num_cached: int = 0
    prefill_left: int = 0
    decode_left: int = 0
    hashes: list[int] = field(default_factory=list)
    replica: int = -1


def zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (k**s) for k in range(1, n + 1)]
    total, acc, cdf = sum(weights), 0.0, []
    for w in weights:
        acc += w
        cdf.append(acc / total)
    return cdf


def mean_request_seconds() -> float:
    """Replica-seconds one average request costs at a full batch (prefill + its share of
    decode steps), for the arrival rate."""
    prompt, output = 1000, 144  # a mid-session prompt, the mean answer
    step_64 = STEP_BASE_S + MAX_SEQS * STEP_PER_SEQ_S
    return (
        prompt * PREFILL_S + output * step_64 / MAX_SEQS
    )  # no prefix cache: round robin stays stable


# -- one replica ---------------------------------------------------------------------------------


class SimReplica:
    def __init__(self, index: int, lora_slots: int, load_s: float) -> None:
        self.index = index
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.cache: OrderedDict[int, None] = OrderedDict()  # free cached blocks, LRU first
        self.pinned: dict[int, int] = {}  # block hash -> running sequences holding it
        self.slots: OrderedDict[str, None] = OrderedDict()
        self.lora_slots = lora_slots
        self.load_s = load_s
        self.kv_used = 0  # tokens reserved by running sequences
        self.is_stepping = False
        self.num_adapter_loads = 0

    def kv_usage(self) -> float:
        return self.kv_used / KV_TOKENS

    def _adapter_ok(self, adapter: str, loads: list[str]) -> bool:
        if adapter in self.slots or adapter in loads:
            return True
        in_use = {r.session.adapter for r in self.running} | set(loads)
        return len(self.slots) < self.lora_slots or any(a not in in_use for a in self.slots)

    def _load(self, adapter: str) -> None:
        if adapter in self.slots:
            self.slots.move_to_end(adapter)
            return
        in_use = {r.session.adapter for r in self.running}
        while len(self.slots) >= self.lora_slots:
            victim = next(a for a in self.slots if a not in in_use)
            del self.slots[victim]
        self.slots[adapter] = None
        self.num_adapter_loads += 1

    def admit(self, now: float) -> int:
        """Admit waiting requests FCFS (skipping none: head-of-line as the engine); returns
        adapter loads this step."""
        loads: list[str] = []
        while self.waiting and len(self.running) < MAX_SEQS:
            req = self.waiting[0]
            need = len(req.prompt) + req.num_output
            if self.kv_used + need > KV_TOKENS or not self._adapter_ok(req.session.adapter, loads):
                break
            self.waiting.pop(0)
            if req.session.adapter not in self.slots:
                loads.append(req.session.adapter)
            self._load(req.session.adapter)
            matched = 0
            for h in req.hashes:
                if h in self.cache or h in self.pinned:
                    matched += 1
                else:
                    break
            req.num_cached = min(matched * BLOCK, len(req.prompt) - 1)
            req.prefill_left = len(req.prompt) - req.num_cached
            req.decode_left = req.num_output
            req.admitted = now
            for h in req.hashes:  # its blocks are in use now, cached or about to be
                self.cache.pop(h, None)
                self.pinned[h] = self.pinned.get(h, 0) + 1
            self.kv_used += need
            self.running.append(req)
        self._evict()
        return len(loads)

    def _evict(self) -> None:
        free_blocks = (KV_TOKENS - self.kv_used) // BLOCK
        while len(self.cache) > max(free_blocks, 0):
            self.cache.popitem(last=False)

    def step(self, now: float) -> tuple[float, list[Req], list[Req]]:
        """One engine step from `now`: (its duration, requests that got their first token,
        requests that finished)."""
        num_loads = self.admit(now)
        budget, num_prefill, num_decode = PREFILL_CHUNK, 0, 0
        firsts, done = [], []
        for req in self.running:
            if req.prefill_left > 0:
                take = min(req.prefill_left, budget)
                budget -= take
                req.prefill_left -= take
                num_prefill += take
                if req.prefill_left == 0:
                    firsts.append(req)
                    req.decode_left -= 1
            else:
                num_decode += 1
                req.decode_left -= 1
            if req.decode_left <= 0 and req.prefill_left == 0:
                done.append(req)
        duration = (
            STEP_BASE_S + STEP_PER_SEQ_S * num_decode + PREFILL_S * num_prefill
            + self.load_s * num_loads
        )  # fmt: skip
        for req in done:
            self.running.remove(req)
            self.kv_used -= len(req.prompt) + req.num_output
            for h in req.hashes:
                self.pinned[h] -= 1
                if not self.pinned[h]:
                    del self.pinned[h]
                    self.cache[h] = None  # free, cached, most recent
        return duration, firsts, done


# -- the simulation ----------------------------------------------------------------------------


class Stub:
    """A replica's backend as the router sees it in the simulation: never called."""

    model_info = ModelInfo("sim", 8192, 49152, "bfloat16")


def simulate(strategy: str, args: argparse.Namespace, num_replicas: int) -> dict:
    rng = random.Random(args.seed)  # the same workload for every strategy
    cdf = zipf_cdf(args.adapters, args.zipf)
    tenants = [f"tenant-{rng.randrange(args.tenants)}" for _ in range(args.adapters)]
    systems = [
        [rng.randrange(1, 49152) for _ in range(rng.randint(200, 800))]
        for _ in range(args.adapters)
    ]
    replicas = [
        SimReplica(i, args.lora_slots, args.adapter_load_ms / 1000) for i in range(num_replicas)
    ]
    clock = [0.0]  # the simulated time, the router's clock
    router = Router(
        [Replica(f"r{i}", Stub()) for i in range(num_replicas)],
        RoutingConfig(strategy=strategy, adapter_slots=args.lora_slots, **dict(args.weight or [])),
        model_info=Stub.model_info,
        clock=lambda: clock[0],
    )
    views = [r.view for r in router.replicas]
    num_requests = args.requests_per_replica * num_replicas
    rate = args.load * num_replicas / mean_request_seconds() / 4.0  # sessions/s, 4 turns each
    events: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(t: float, kind: str, data: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    t, num_turns = 0.0, 0
    while num_turns < num_requests:
        t += rng.expovariate(rate)
        k = bisect.bisect_left(cdf, rng.random())
        turns = rng.randint(1, 7)  # mean 4
        push(t, "turn", Session(tenants[k], f"ad-{k}", list(systems[k]), turns))
        num_turns += turns
    push(0.0, "scrape", None)

    finished: list[Req] = []
    num_sent = 0
    while len(finished) < num_requests:
        now, _, kind, data = heapq.heappop(events)
        clock[0] = now
        if kind == "scrape":
            for view, rep in zip(views, replicas):
                view.num_waiting, view.num_running = len(rep.waiting), len(rep.running)
                view.kv_usage = rep.kv_usage()
            push(now + args.scrape_s, "scrape", None)
        elif kind == "turn":
            session: Session = data
            if num_sent >= num_requests:
                continue
            session.history += [rng.randrange(1, 49152) for _ in range(rng.randint(20, 120))]
            prompt = list(session.history)
            req = Req(num_sent, session, prompt, rng.randint(32, 256), now)
            num_sent += 1
            gen = GenerateRequest(
                f"r{req.id}", prompt, SamplingParams(max_tokens=req.num_output),
                adapters=(AdapterWeight(session.adapter),), cache_scope=session.tenant,
            )  # fmt: skip
            picked = router.route(gen)
            req.replica = int(picked.name[1:])
            picked.view.num_in_flight += 1
            req.hashes = prefix_hashes(
                cache_scope(session.tenant, (session.adapter,)), prompt, BLOCK
            )
            rep = replicas[req.replica]
            rep.waiting.append(req)
            if not rep.is_stepping:
                rep.is_stepping = True
                push(now, "step", rep)
        elif kind == "first":  # the gateway sees the first token when its step ends
            router.started(f"r{data.id}")
        elif kind == "done":  # and the answer's end
            router.finished(f"r{data.id}")
        elif kind == "step":
            rep: SimReplica = data
            if not rep.running and not rep.waiting:
                rep.is_stepping = False
                continue
            duration, firsts, done = rep.step(now)
            end = now + duration
            for req in firsts:
                req.first_token = end
                push(end, "first", req)
            for req in done:
                views[rep.index].num_in_flight -= 1
                push(end, "done", req)
                finished.append(req)
                session = req.session
                session.history += [rng.randrange(1, 49152) for _ in range(req.num_output)]
                session.turns_left -= 1
                if session.turns_left > 0:
                    push(end + rng.expovariate(1 / 3.0), "turn", session)
            push(end, "step", rep)
    return summarise(strategy, finished, replicas, args.slo_s)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


def summarise(strategy: str, done: list[Req], replicas: list[SimReplica], slo_s: float) -> dict:
    prompt = sum(len(r.prompt) for r in done)
    cached = sum(r.num_cached for r in done)
    queueing = [r.admitted - r.arrived for r in done]
    ttft = [r.first_token - r.arrived for r in done]
    span = max(r.first_token for r in done) - min(r.arrived for r in done)
    per_replica = [0] * len(replicas)
    for r in done:
        per_replica[r.replica] += 1
    return {
        "strategy": strategy,
        "requests": len(done),
        "prefix_hit": cached / prompt,
        "loads_per_1k": 1000 * sum(r.num_adapter_loads for r in replicas) / len(done),
        "queue_p50": pct(queueing, 50),
        "queue_p99": pct(queueing, 99),
        "ttft_p99": pct(ttft, 99),
        "goodput": sum(1 for x in ttft if x <= slo_s) / span,
        "busiest": max(per_replica) / (len(done) / len(replicas)),
    }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    words = set(text.split())
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in words) or "none"


def _weight(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--requests-per-replica", type=int, default=250)
    p.add_argument("--adapters", type=int, default=1000)
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--lora-slots", type=int, default=16)
    p.add_argument("--adapter-load-ms", type=float, default=40.0)
    p.add_argument("--load", type=float, default=0.7, help="offered load / capacity")
    p.add_argument("--scrape-s", type=float, default=1.0)
    p.add_argument("--slo-s", type=float, default=2.0, help="TTFT goodput threshold")
    p.add_argument(
        "--seed", "--seeds", type=int, nargs="+", default=[0],
        help="workload seeds; with several, a summary of the targets met per fleet size",
    )  # fmt: skip
    p.add_argument(
        "--weight", nargs=2, action="append", metavar=("NAME", "VALUE"), type=_weight,
        help="a [routing] score setting, e.g. --weight queue_weight 4 (default: the shipped)",
    )  # fmt: skip
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    args = p.parse_args()
    print(
        f"routing simulation; {os.uname().machine}, {os.cpu_count()} CPUs, flags {cpu_flags()}, "
        f"load average {load_average()} (the simulation's numbers do not depend on the box)"
    )
    print(
        f"{args.adapters} adapters (zipf {args.zipf}), {args.tenants} tenants, {args.lora_slots} "
        f"LoRA slots, {args.adapter_load_ms:g} ms a load, load {args.load:g}, scrape "
        f"{args.scrape_s:g} s, seeds {' '.join(map(str, args.seed))}; service rates from bench/RESULTS.md W1/W2"
    )
    header = (
        f"{'replicas':>8} {'seed':>4} {'strategy':<13} {'requests':>8} {'prefix hit':>10} "
        f"{'loads/1k':>9} {'queue p50':>10} {'queue p99':>10} {'TTFT p99':>9} {'goodput':>8} "
        f"{'busiest':>8} {'x RR hits':>9} {'x RR loads':>10}"
    )
    print(header)
    verdicts: dict[int, list[tuple[float, float, bool, float, float]]] = {}
    seeds = args.seed
    for n in args.replicas:
        for seed in seeds:
            args.seed = seed
            rows = {strategy: simulate(strategy, args, n) for strategy in args.strategies}
            rr = rows.get("round_robin")
            for strategy, row in rows.items():
                hits = f"{row['prefix_hit'] / rr['prefix_hit']:.2f}" if rr else ""
                loads = f"{row['loads_per_1k'] / rr['loads_per_1k']:.3f}" if rr else ""
                print(
                    f"{n:>8} {seed:>4} {strategy:<13} {row['requests']:>8} "
                    f"{row['prefix_hit']:>10.1%} {row['loads_per_1k']:>9.1f} "
                    f"{row['queue_p50']:>9.3f}s {row['queue_p99']:>9.3f}s "
                    f"{row['ttft_p99']:>8.2f}s {row['goodput']:>7.2f}/s {row['busiest']:>7.2f}x "
                    f"{hits:>9} {loads:>10}",
                    flush=True,
                )
            if rr and "affinity" in rows:
                a = rows["affinity"]
                h, ld = a["prefix_hit"] / rr["prefix_hit"], a["loads_per_1k"] / rr["loads_per_1k"]
                met = h >= 2 and ld <= 0.25 and a["queue_p99"] <= rr["queue_p99"]
                q, ttft = a["queue_p99"] / rr["queue_p99"], a["ttft_p99"] / rr["ttft_p99"]
                verdicts.setdefault(n, []).append((h, ld, met, q, ttft))
    print("(busiest: the most requests one replica served over the mean; x RR: over round robin)")
    if verdicts:
        print("affinity against the targets (>= 2x RR's prefix hits, <= 0.25x its adapter loads, ")
        print("queueing p99 <= RR's), over the seeds:")
        for n, rows in verdicts.items():
            hits, loads = [r[0] for r in rows], [r[1] for r in rows]
            queue, ttft = [r[3] for r in rows], [r[4] for r in rows]
            print(
                f"{n:>8} replicas: all three met on {sum(r[2] for r in rows)} of {len(rows)}; "
                f"x RR hits {min(hits):.2f}-{max(hits):.2f}, x RR loads {min(loads):.3f}-"
                f"{max(loads):.3f} (mean {sum(loads) / len(loads):.3f}), x RR queueing p99 "
                f"{min(queue):.2f}-{max(queue):.2f}, x RR TTFT p99 {min(ttft):.2f}-{max(ttft):.2f}"
            )


if __name__ == "__main__":
    main()
