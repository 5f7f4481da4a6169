"""Gateway overhead: latency the ownllm API + gateway adds over the same backend called
directly, at 50 concurrent streams, measured in the same run and the same time window.

One server process (uvicorn, loopback TCP) serves, on the same FastAPI app and the same
`ScriptedBackend` instance (ownllm/backends/scripted.py, counting: `--tokens` tokens per
request, one every `--token-delay-ms`, no model — the gateway is the edge being measured,
not the engine):

- `direct`:  POST /direct — a bare Starlette endpoint that calls `backend.generate()` and
  streams each delta as an SSE frame: no auth, limits, tokenisation, pydantic, guard or
  ledger. This is "the backend called directly" over the same HTTP stack.
- `gateway`: POST /v1/chat/completions with a real API key (rpm/tpm/concurrency limits
  set, so the limiter runs) — auth, limits, chat template + tokenisation, the inference
  pipeline and hooks, OpenAI SSE chunks, one usage-ledger row per request.
- `gateway+budget`: the same with a monthly token budget on the key (`--budget`), so each
  request also reserves its worst case before it starts and settles it after: from this
  replica's lease in memory for budgets of 1M tokens and more, with a database transaction
  per request (SQLite here, in a worker thread) for smaller ones (ownllm.gateway.budget).

The server imports the embedded engine's modules (torch) as `ownllm serve` does, so its heap
— what a full garbage collection walks — is the size of the real server's.

Two phases, each `--rounds` times:
- all modes mixed: one shuffled schedule of `--requests` requests per mode that the
  `--concurrency` client streams work through, so at any moment all modes are in flight
  together and background noise (other jobs on the machine, the server's own garbage
  collections and background threads) hits them alike. This measures the latency each
  request's own path through the gateway adds; the CPU the gateway spends slows the direct
  requests of the same window too, so it is not counted.
- each mode alone, modes taking turns: `--block-requests` requests of one mode, then the
  next. This measures throughput, server CPU per request and the latency of a server that
  serves only that mode (the gateway's own path plus the load it adds), at the price of
  drift: noise that comes and goes lands on one mode.

The streams start spread evenly over the duration of one request (a closed loop started as
one burst keeps its requests in step). TTFT is the time to the frame carrying the first token, total the time to the end of the
stream; added = percentile(mode) − percentile(direct). Server CPU is the server process's
CPU time (all threads), which contention distorts far less than wall-clock latency. The
server also reports its garbage-collector pauses (`gc.callbacks`).

The client is a minimal HTTP/1.1 keep-alive client on raw asyncio streams (one connection
per stream), so the measuring side takes little of the CPU the server shares with it.

Usage: python -m bench.gateway_overhead [--requests 600] [--block-requests 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench._support import free_port

MODES = ("direct", "gateway", "gateway+budget")
FIRST_TOKEN = b"tok0"  # the scripted backend's first token text, in both response shapes


# -- server process ---------------------------------------------------------------------------


def serve(port: int, data_dir: str, token_delay_s: float, opts: dict, ready) -> None:
    import gc

    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse

    import ownllm.engine.llm_engine  # noqa: F401  (the heap of `ownllm serve`: torch & co.)
    from ownllm.api.app import create_app
    from ownllm.api.state import AppState
    from ownllm.backends.base import GenerateRequest, SamplingParams
    from ownllm.backends.scripted import counting_backend
    from ownllm.config import load_config
    from ownllm.gateway.gateway import Gateway
    from ownllm.gateway.keys import create_key
    from ownllm.gateway.principal import Limits
    from ownllm.models.tiny import make_tokenizer
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database

    root = Path(data_dir)
    (root / "tok").mkdir()
    make_tokenizer(root / "tok")
    tokenizer = Tokenizer.from_dir(root / "tok")
    db = Database.open(f"sqlite:///{root / 'ownllm.db'}")
    limits = Limits(rpm=1_000_000, tpm=1_000_000_000, max_concurrent=1000)
    plain = create_key(db, "bench", "plain", limits=limits).secret
    budget = create_key(
        db,
        "bench",
        "budget",
        limits=Limits(**{**limits.__dict__, "monthly_tokens": opts["budget"]}),
    ).secret
    config = load_config(env={}, overrides={"store": {"data_dir": data_dir}})
    backend = counting_backend(tokenizer, delay_s=token_delay_s)
    state = AppState(config=config, data_dir=DataDir(root).ensure(), db=db)
    state.backend, state.tokenizer = backend, tokenizer
    gateway = Gateway.build(config, db, backend=lambda: state.backend)
    if opts["hooks"] == "metering":  # auth, limits and ledger only: drop guard and capture
        gateway = replace(gateway, hooks=(gateway.metering,))
    app = create_app(state, gateway=gateway, start_engine=False)
    prompt_ids = tokenizer.encode_chat([{"role": "user", "content": "Say hello."}])

    async def direct(request: Request) -> StreamingResponse:
        body = json.loads(await request.body())
        sampling = SamplingParams(max_tokens=int(body["max_tokens"]))
        gen = GenerateRequest(f"direct-{time.monotonic_ns()}", prompt_ids, sampling)

        async def frames():
            async for delta in backend.generate(gen):
                yield b"data: " + json.dumps({"text": delta.text}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(on_gc)
    stalls: list[tuple[float, float]] = []  # (seconds late, process CPU seconds meanwhile)

    async def watch_loop() -> None:
        """Event-loop stalls over 20 ms, and whether this process was busy meanwhile (its
        own work: any thread's CPU) or not running (the machine's other jobs)."""
        while True:
            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(0.005)
            late = time.perf_counter() - start - 0.005
            if late > 0.02:
                stalls.append((late, time.process_time() - cpu))

    async def stats(request: Request) -> JSONResponse:
        """CPU time of the whole process (all threads), the gc pauses and loop stalls since
        the last call; `?frozen=1`: the number of frozen objects (a 30 ms walk of them)."""
        if not watchers:  # the first call, after startup
            watchers.append(asyncio.create_task(watch_loop()))
            if opts["gc_unfreeze"]:
                gc.unfreeze()  # the A/B switch: as if the app had not frozen its startup heap
        if request.query_params.get("frozen"):
            return JSONResponse({"frozen": gc.get_freeze_count()})
        taken, late = pauses[:], stalls[:]
        del pauses[: len(taken)], stalls[: len(late)]
        return JSONResponse({"cpu_s": time.process_time(), "gc": taken, "stalls": late})

    watchers: list[asyncio.Task] = []

    from starlette.routing import Route

    # first in the route table: /direct must not pay for matching the API's ~100 routes
    app.router.routes[:0] = [
        Route("/direct", direct, methods=["POST"]),
        Route("/bench/stats", stats, methods=["GET"]),
    ]
    hook_names = [type(h).__name__ for h in gateway.hooks]
    ready.put({"plain": plain, "budget": budget, "model": state.model_id, "hooks": hook_names})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- client -----------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: status line, headers, a Content-Length or chunked
    body — all an SSE stream from uvicorn needs, at a fraction of a full client's CPU."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = ""):
        """(status, seconds to the first token frame or None, seconds to the end, body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n"
        )
        start = time.perf_counter()
        self.writer.write(head.encode() + body)
        reader, ttft, parts = self.reader, None, []
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"transfer-encoding") == b"chunked":
            while size := int((await reader.readline()).split(b";")[0], 16):
                data = await reader.readexactly(size + 2)
                if ttft is None and FIRST_TOKEN in data:
                    ttft = time.perf_counter() - start
                if status != 200 or path.startswith("/bench"):
                    parts.append(data[:-2])
            await reader.readline()  # the empty trailer
        else:
            parts.append(await reader.readexactly(int(fields.get(b"content-length", b"0"))))
        return status, ttft, time.perf_counter() - start, b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def request_for(mode: str, keys: dict, tokens: int) -> tuple[str, bytes, str]:
    if mode == "direct":
        return "/direct", json.dumps({"max_tokens": tokens}).encode(), ""
    body = {
        "model": keys["model"],
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": tokens,
        "stream": True,
    }
    key = keys["budget"] if mode == "gateway+budget" else keys["plain"]
    return "/v1/chat/completions", json.dumps(body).encode(), f"Authorization: Bearer {key}\r\n"


async def run_schedule(port: int, schedule: list[str], keys: dict, args) -> dict:
    """Work through `schedule` (one mode per request) with `args.concurrency` streams."""
    requests = {m: request_for(m, keys, args.tokens) for m in MODES}
    conns = [Connection(port) for _ in range(args.concurrency)]
    samples: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}

    async def call(conn: Connection, mode: str) -> tuple[float, float]:
        status, ttft, total, body = await conn.request("POST", *requests[mode])
        if status != 200 or ttft is None:
            raise RuntimeError(f"{mode}: HTTP {status}: {body[:300]!r}")
        return ttft, total

    async def stream(conn: Connection, delay: float) -> None:
        # streams start spread over one request's duration, not in one burst (also for the
        # warm-up: 50 warm-up requests ending together stall the server for ~30 ms)
        await asyncio.sleep(delay)
        for mode in MODES:  # warm this connection and every code path
            await call(conn, mode)
        await barrier.wait()
        await asyncio.sleep(delay)
        while next_index:
            mode = schedule[next_index.pop()]
            samples[mode].append(await call(conn, mode))

    async def server_stats() -> dict:
        return await get_stats(port)

    barrier = asyncio.Barrier(args.concurrency + 1)
    next_index = list(range(len(schedule) - 1, -1, -1))
    duration = args.tokens * args.token_delay_ms / 1000
    workers = [
        asyncio.create_task(stream(c, duration * i / len(conns))) for i, c in enumerate(conns)
    ]
    await barrier.wait()
    before = await server_stats()
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    after = await server_stats()
    for conn in conns:
        conn.close()
    return {
        "samples": samples,
        "elapsed": elapsed,
        "server_cpu": after["cpu_s"] - before["cpu_s"],
        "client_cpu": (client_after.ru_utime + client_after.ru_stime)
        - (client_before.ru_utime + client_before.ru_stime),
        "gc": after["gc"],
        "stalls": after["stalls"],
    }


async def get_stats(port: int, query: str = "") -> dict:
    conn = Connection(port)  # a new one: an idle one is closed after uvicorn's 5 s
    _, _, _, body = await conn.request("GET", "/bench/stats" + query)
    conn.close()
    return json.loads(body)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600, help="per mode and round, mixed")
    parser.add_argument(
        "--block-requests", type=int, default=400, help="per mode and round, alone (0: skip)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per response")
    parser.add_argument("--token-delay-ms", type=float, default=20.0, help="scripted decode pace")
    parser.add_argument(
        "--hooks",
        choices=("all", "metering"),
        default="all",
        help="all: every inference hook the app installs; metering: auth/limits/ledger only",
    )
    parser.add_argument(
        "--gc-unfreeze",
        action="store_true",
        help="undo the app's gc.freeze() of its startup heap (A/B of the gc tail)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=10**12,
        help="monthly tokens of the gateway+budget key (under 1,000,000: reserved per request)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    port = args.port or free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    opts = {"hooks": args.hooks, "gc_unfreeze": args.gc_unfreeze, "budget": args.budget}
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    utc_start = time.strftime("%H:%M:%S", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(
            target=serve, args=(port, tmp, args.token_delay_ms / 1000, opts, ready), daemon=True
        )
        server.start()
        keys = _wait_ready(server, ready)
        _wait_listening(port)
        mixed, alone = [], {m: [] for m in MODES}
        for _ in range(args.rounds):
            schedule = [m for m in MODES for _ in range(args.requests)]
            rng.shuffle(schedule)
            mixed.append(asyncio.run(run_schedule(port, schedule, keys, args)))
        for _ in range(args.rounds if args.block_requests else 0):
            for mode in MODES:
                schedule = [mode] * args.block_requests
                alone[mode].append(asyncio.run(run_schedule(port, schedule, keys, args)))
        frozen = asyncio.run(get_stats(port, "?frozen=1"))["frozen"]
        server.terminate()
        server.join(timeout=10)
    load_after = os.getloadavg()
    print(
        f"{utc_start}–{time.strftime('%H:%M:%S', time.gmtime())} UTC; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} CPUs"
    )
    print(
        f"gateway hooks: {', '.join(keys['hooks'])}; monthly budget {args.budget:,} tokens; "
        f"gc heap frozen: {frozen} objects"
    )
    print(
        f"{args.concurrency} concurrent streams, {args.tokens} tokens/response, "
        f"{args.token_delay_ms:g} ms/token scripted backend, {args.rounds} rounds"
    )
    report_mixed(mixed, args)
    if args.block_requests:
        report_alone(alone, args)
    runs = (*mixed, *(x for m in MODES for x in alone[m]))
    stalls = [s for r in runs for s in r["stalls"]]
    busy = [late for late, cpu in stalls if cpu >= late / 2]
    print(
        f"server event-loop stalls over 20 ms: {len(stalls)}"
        + (
            f" (max {max(s[0] for s in stalls) * 1e3:.0f} ms; {len(busy)} with the server "
            "busy, the rest with it waiting for a CPU)"
            if stalls
            else ""
        )
    )
    pauses = [p for r in runs for p in r["gc"]]
    for gen in (0, 1, 2):
        mine = [secs * 1e3 for g, secs in pauses if g == gen]
        if mine:
            print(
                f"server gc gen {gen}: {len(mine)} collections, {sum(mine):.1f} ms in all, "
                f"max {max(mine):.1f} ms"
            )


def _wait_ready(server, ready) -> dict:
    import queue

    while server.is_alive():
        try:
            return ready.get(timeout=0.5)
        except queue.Empty:
            continue
    raise SystemExit("the bench server exited before it was ready (see its traceback above)")


def _wait_listening(port: int) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def _column(samples: list[tuple[float, float]], i: int) -> list[float]:
    return [s[i] for s in samples]


def _added(samples: dict, mode: str, i: int = 1) -> tuple[float, float]:
    """(p50, p99) of `mode` minus those of direct, ms; i: 0 TTFT, 1 total."""
    base, mine = _column(samples["direct"], i), _column(samples[mode], i)
    return (pct(mine, 50) - pct(base, 50)) * 1e3, (pct(mine, 99) - pct(base, 99)) * 1e3


def report_mixed(rounds: list[dict], args) -> None:
    n = args.rounds * args.requests
    print(f"\nall modes mixed in one window: {args.requests} requests per mode and round ({n})")
    pooled = {m: [s for r in rounds for s in r["samples"][m]] for m in MODES}
    print(
        f"{'mode':<16}{'TTFT p50':>9}{'p99':>8}{'total p50':>10}{'p99':>8}"
        f"{'added TTFT p50':>15}{'p99':>7}{'added total p50':>16}{'p99':>7}   (ms)"
    )
    for mode in MODES:
        ttft, total = _column(pooled[mode], 0), _column(pooled[mode], 1)
        row = (
            f"{mode:<16}{pct(ttft, 50) * 1e3:>9.1f}{pct(ttft, 99) * 1e3:>8.1f}"
            f"{pct(total, 50) * 1e3:>10.1f}{pct(total, 99) * 1e3:>8.1f}"
        )
        if mode != "direct":
            (t50, t99), (a50, a99) = _added(pooled, mode, 0), _added(pooled, mode, 1)
            row += f"{t50:>15.1f}{t99:>7.1f}{a50:>16.1f}{a99:>7.1f}"
        print(row)
    for mode in MODES[1:]:
        per_round = [_added(r["samples"], mode) for r in rounds]
        p50s = ", ".join(f"{a:+.1f}" for a, _ in per_round)
        p99s = ", ".join(f"{b:+.1f}" for _, b in per_round)
        print(f"  {mode} added total, per round: p50 {p50s}; p99 {p99s}")
    rps = 3 * n / sum(r["elapsed"] for r in rounds)
    cpu = sum(r["client_cpu"] for r in rounds) / (3 * n) * 1e3
    print(f"  {rps:.0f} req/s in all; client CPU {cpu:.2f} ms/request")


def report_alone(alone: dict, args) -> None:
    n = args.rounds * args.block_requests
    print(
        f"\neach mode alone, modes taking turns: {args.block_requests} requests per mode and "
        f"round ({n})"
    )
    print(
        f"{'mode':<16}{'req/s':>7}{'total p50':>10}{'p99':>8}{'added p50':>10}{'p99':>7}"
        f"{'server CPU/req':>16}{'added':>7}{'stalls':>8}   (ms)"
    )
    pooled = {m: [s for r in alone[m] for s in r["samples"][m]] for m in MODES}
    stalls = {m: sum(len(r["stalls"]) for r in alone[m]) for m in MODES}
    cpu = {m: sum(r["server_cpu"] for r in alone[m]) / n * 1e3 for m in MODES}
    for mode in MODES:
        total = _column(pooled[mode], 1)
        rps = n / sum(r["elapsed"] for r in alone[mode])
        row = f"{mode:<16}{rps:>7.0f}{pct(total, 50) * 1e3:>10.1f}{pct(total, 99) * 1e3:>8.1f}"
        if mode == "direct":
            row += f"{'':>17}{cpu[mode]:>16.2f}{'':>7}"
        else:
            a50, a99 = _added(pooled, mode)
            row += f"{a50:>10.1f}{a99:>7.1f}{cpu[mode]:>16.2f}{cpu[mode] - cpu['direct']:>7.2f}"
        print(row + f"{stalls[mode]:>8}")


if __name__ == "__main__":
    main()
