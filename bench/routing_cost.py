"""The router's own CPU cost per request: `Router.route` + `started` + `finished`, with and
without the open-conversation count, interleaved in one process (the baseline in the same
run). No engine and no I/O: stand-in replicas, multi-turn prompts of growing length.

    python -m bench.routing_cost --replicas 8 --prompt-tokens 1000 --rounds 10
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.routing_sim import Stub, cpu_flags, load_average
from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams
from ownllm.config import RoutingConfig
from ownllm.gateway.routing import Replica, Router


def make(n: int, conversations: bool) -> Router:
    replicas = [Replica(f"r{i}", Stub()) for i in range(n)]
    return Router(replicas, RoutingConfig(conversations=conversations), model_info=Stub.model_info)


def workload(num: int, prompt_tokens: int, seed: int) -> list[GenerateRequest]:
    """`num` requests from 50 conversations: each turn the one before plus 40 tokens."""
    rng = random.Random(seed)
    histories = [[rng.randrange(1, 49152) for _ in range(prompt_tokens)] for _ in range(50)]
    out = []
    for i in range(num):
        k = rng.randrange(50)
        histories[k] += [rng.randrange(1, 49152) for _ in range(40)]
        if len(histories[k]) > 2 * prompt_tokens:
            histories[k] = histories[k][:prompt_tokens]
        out.append(
            GenerateRequest(
                f"q{i}",
                list(histories[k]),
                SamplingParams(max_tokens=16),
                adapters=(AdapterWeight(f"ad-{k % 20}"),),
                cache_scope=f"t{k % 5}",
            )  # fmt: skip
        )
    return out


def run(router: Router, requests: list[GenerateRequest], tag: str) -> float:
    started = time.perf_counter()
    for r in requests:
        rid = f"{tag}-{r.request_id}"
        req = GenerateRequest(
            rid, r.prompt_token_ids, r.sampling, adapters=r.adapters, cache_scope=r.cache_scope
        )
        replica = router.route(req)
        replica.view.num_in_flight += 1
        router.started(rid)
        router.finished(rid)
        replica.view.num_in_flight -= 1
    return (time.perf_counter() - started) / len(requests) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=1000)
    p.add_argument("--requests", type=int, default=2000, help="per round and variant")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    print(f"router cost; flags {cpu_flags()}, load average {load_average()}")
    routers = {"off": make(args.replicas, False), "on": make(args.replicas, True)}
    times: dict[str, list[float]] = {"off": [], "on": []}
    for k in range(args.rounds):
        requests = workload(args.requests, args.prompt_tokens, seed=k)
        order = ("off", "on") if k % 2 == 0 else ("on", "off")
        for name in order:
            times[name].append(run(routers[name], requests, f"{k}"))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(
        f"{args.replicas} replicas, ~{args.prompt_tokens}-token prompts: per request, median of "
        f"{args.rounds} rounds: conversations off {off:.1f} us, on {on:.1f} us ({on / off:.3f}x, "
        f"+{on - off:.1f} us); rounds off {min(times['off']):.1f}-{max(times['off']):.1f}, "
        f"on {min(times['on']):.1f}-{max(times['on']):.1f} us; load average {load_average()}"
    )


if __name__ == "__main__":
    main()
