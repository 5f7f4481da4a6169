"""Load and soak: one gateway in front of its replicas holds `--streams` concurrent streams
(1,000) with no errors, round after round, while its RSS is sampled.

The gateway is `ownllm serve`'s app (create_app: auth in open development mode, limits,
guard, the usage ledger on SQLite) in its own process, served by uvicorn on loopback, over a
`Router` of `--replicas` in-process ScriptedBackend replicas (ownllm/backends/scripted.py:
COUNTING, one token every `--token-delay-s`, `--tokens` tokens a stream): the gateway and
the router are what is measured, not an engine. The replicas' cost is a sleep per token.

This process is the client: `--streams` httpx streams at once, each a chat completion with
`stream: true` read to its `[DONE]`; a round starts when the last one ends, and rounds run
for `--minutes`. An error is any status other than 200, a stream without `[DONE]`, an
error event, or a text other than the scripted one. The gateway's RSS (/proc/PID/status)
is read every second: reported at the end of the first round (warm), its peak and at the
end, with the growth per round after the first.

    python -m bench.soak                          # 1,000 streams, 20 minutes
    python -m bench.soak --minutes 5 --streams 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._support import free_port


def serve(port: int, num_replicas: int, delay_s: float, home: Path) -> None:
    """The gateway process."""
    import uvicorn

    from ownllm.api.app import create_app
    from ownllm.api.state import AppState
    from ownllm.backends.scripted import counting_backend
    from ownllm.config import RoutingConfig, load_config
    from ownllm.gateway.routing import Replica, Router
    from ownllm.models.tiny import make_tiny_model
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database

    model_dir = make_tiny_model(home / "model")
    tokenizer = Tokenizer.from_dir(model_dir)
    overrides = {
        "store": {"data_dir": str(home / "data")},
        "model": {"name": "tiny"},
    }
    config = load_config(env={}, overrides=overrides)
    replicas = [
        Replica(f"r{i}", counting_backend(tokenizer, delay_s=delay_s)) for i in range(num_replicas)
    ]
    for r in replicas:  # a ScriptedBackend records every request for tests: not the gateway's
        r.backend.requests = collections.deque(maxlen=1)
    router = Router(replicas, RoutingConfig(), tokenizer=tokenizer)
    state = AppState(
        config,
        DataDir(home / "data").ensure(),
        db=Database.open(config.store.url),
        tokenizer=tokenizer,
    )
    state.backend = router
    app = create_app(state, start_engine=False)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=config.server.keep_alive_s,  # as `ownllm serve` runs it
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_stream(client: httpx.AsyncClient, url: str, num_tokens: int, expected: str) -> str:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Count, please."}],
        "max_tokens": num_tokens,
        "stream": True,
    }
    began = False  # whether the response's status line had come (mid-stream errors)
    try:
        async with client.stream("POST", url, json=body) as response:
            began = True
            if response.status_code != 200:
                return f"status {response.status_code}"
            text, done = [], False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        return f"error event {event['error'].get('code')}"
                    for choice in event.get("choices", []):
                        text.append(choice["delta"].get("content") or "")
            if not done:
                return "no [DONE]"
            return "ok" if "".join(text) == expected else "wrong text"
    except httpx.HTTPError as e:
        return f"{type(e).__name__} {'mid-stream' if began else 'before the response'}"


async def run(args: argparse.Namespace, pid: int, base: str) -> None:
    url = base + "/v1/chat/completions"
    expected = "".join(f"tok{i} " for i in range(args.tokens))
    limits = httpx.Limits(max_connections=args.streams + 16, max_keepalive_connections=args.streams)
    timeout = httpx.Timeout(args.tokens * args.token_delay_s * 20 + 120)
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), rss_mib(pid)))
            await asyncio.sleep(1.0)

    start_rss = rss_mib(pid)
    sampler = asyncio.create_task(sample())
    deadline = time.monotonic() + args.minutes * 60
    round_ends: list[float] = []
    errors: dict[str, int] = {}
    num_streams = 0
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        while True:
            started = time.monotonic()
            results = await asyncio.gather(
                *(one_stream(client, url, args.tokens, expected) for _ in range(args.streams))
            )
            num_streams += len(results)
            for r in results:
                if r != "ok":
                    errors[r] = errors.get(r, 0) + 1
            round_ends.append(rss_mib(pid))
            print(
                f"round {len(round_ends)}: {args.streams} streams in "
                f"{time.monotonic() - started:.1f} s, errors so far {sum(errors.values())}, "
                f"gateway RSS {round_ends[-1]:.0f} MiB, load average {load_average()}",
                flush=True,
            )
            if time.monotonic() >= deadline:
                break
    stop.set()
    await sampler
    peak = max(m for _, m in samples)
    growth = (round_ends[-1] - round_ends[0]) / max(1, len(round_ends) - 1)
    print(
        f"\n{num_streams} streams in {len(round_ends)} rounds of {args.streams} concurrent, "
        f"{args.minutes:g} min: errors {sum(errors.values())} {errors or ''}\n"
        f"gateway RSS MiB: before {start_rss:.0f}, after round 1 {round_ends[0]:.0f}, "
        f"peak {peak:.0f}, end {round_ends[-1]:.0f}; {growth:+.1f} MiB a round after the first"
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--token-delay-s", type=float, default=0.5)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the gateway process
    p.add_argument("--home", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.replicas, args.token_delay_s, Path(args.home))
        return
    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16")
             if f in Path("/proc/cpuinfo").read_text().split()]  # fmt: skip
    print(
        f"soak: {os.uname().machine}, {os.cpu_count()} CPUs, flags {' '.join(flags)}, load "
        f"average {load_average()}; {args.streams} streams x {args.tokens} tokens, one every "
        f"{args.token_delay_s:g} s, {args.replicas} scripted replicas behind the router"
    )
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        cmd = [sys.executable, "-m", "bench.soak", "--serve", str(port), "--home", home,
               "--replicas", str(args.replicas), "--token-delay-s", str(args.token_delay_s)]  # fmt: skip
        server = subprocess.Popen(cmd)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while True:
                assert server.poll() is None, "the gateway exited"
                assert time.monotonic() < deadline, "the gateway did not start"
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            asyncio.run(run(args, server.pid, base))
        finally:
            server.terminate()
            server.wait(timeout=120)


if __name__ == "__main__":
    main()
