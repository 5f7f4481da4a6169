"""Gateway overhead: latency the ownllm API + gateway adds over the same backend called
directly, at 50 concurrent streams, measured in the same run.

One server process (uvicorn, loopback TCP) serves, on the same FastAPI app and the same
`FakeBackend` instance (tests/fake_backend.py: `--tokens` tokens per request, one every
`--token-delay-ms`, no model — the gateway is the edge being measured, not the engine):

- `direct`:  POST /direct — a bare Starlette endpoint that calls `backend.generate()` and
  streams each delta as an SSE frame: no auth, limits, tokenisation, pydantic, guard or
  ledger. This is "the backend called directly" over the same HTTP stack.
- `gateway`: POST /v1/chat/completions with a real API key (rpm/tpm/concurrency limits
  set, so the limiter runs) — auth, limits, chat template + tokenisation, the inference
  pipeline and hooks, OpenAI SSE chunks, one usage-ledger row per request.
- `gateway+budget`: the same with a monthly token budget on the key, so each request also
  reserves and settles tokens in the database (two small transactions, SQLite here).

A client process keeps `--concurrency` streams in flight and records, per request, the
time to the first content frame (TTFT) and to the end of the stream. Modes alternate in
rounds so background noise hits all of them alike. Added latency = percentile(mode) −
percentile(direct). Usage: python -m bench.gateway_overhead [--requests 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import statistics
import tempfile
import time
from pathlib import Path

MODES = ("direct", "gateway", "gateway+budget")


# -- server process ---------------------------------------------------------------------------


def serve(port: int, data_dir: str, token_delay_s: float, hooks: str, ready) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    from ownllm.api.app import create_app
    from ownllm.api.state import AppState
    from ownllm.backends.base import GenerateRequest, SamplingParams
    from ownllm.config import load_config
    from ownllm.gateway.keys import create_key
    from ownllm.gateway.principal import Limits
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database
    from tests.fake_backend import FakeBackend
    from tests.tiny import make_tokenizer

    root = Path(data_dir)
    (root / "tok").mkdir()
    make_tokenizer(root / "tok")
    tokenizer = Tokenizer.from_dir(root / "tok")
    db = Database.open(f"sqlite:///{root / 'ownllm.db'}")
    limits = Limits(rpm=1_000_000, tpm=1_000_000_000, max_concurrent=1000)
    plain = create_key(db, "bench", "plain", limits=limits).secret
    budget = create_key(
        db, "bench", "budget", limits=Limits(**{**limits.__dict__, "monthly_tokens": 10**12})
    ).secret
    config = load_config(env={}, overrides={"store": {"data_dir": data_dir}})
    backend = FakeBackend(tokenizer, token_delay_s=token_delay_s)
    state = AppState(config=config, data_dir=DataDir(root).ensure(), db=db)
    state.backend, state.tokenizer = backend, tokenizer
    app = create_app(state, start_engine=False)
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

    app.add_route("/direct", direct, methods=["POST"])

    async def cpu(_request: Request):
        from starlette.responses import JSONResponse

        return JSONResponse({"cpu_s": time.process_time()})  # all threads of this process

    app.add_route("/bench/cpu", cpu, methods=["GET"])
    if hooks == "metering":  # auth, limits and ledger only: drop guard and capture hooks
        from ownllm.gateway.metering import metering_hook_for

        state.inference_hooks[:] = [metering_hook_for(state)]
    hook_names = [type(h).__name__ for h in state.inference_hooks]
    ready.put({"plain": plain, "budget": budget, "model": state.model_id, "hooks": hook_names})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- client -----------------------------------------------------------------------------------


async def one(client, mode: str, keys: dict, tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    if mode == "direct":
        url, body, headers = "/direct", {"max_tokens": tokens}, {}
    else:
        url = "/v1/chat/completions"
        body = {
            "model": keys["model"],
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": tokens,
            "stream": True,
        }
        key = keys["budget"] if mode == "gateway+budget" else keys["plain"]
        headers = {"Authorization": f"Bearer {key}"}
    ttft = None
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{mode}: HTTP {response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                ttft = time.perf_counter() - start
    return ttft, time.perf_counter() - start


async def phase(base_url: str, mode: str, keys: dict, n: int, concurrency: int, tokens: int):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[tuple[float, float]] = []
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(n):
        queue.put_nowait(None)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        await one(client, mode, keys, tokens)  # warm the connection pool and code paths

        async def worker():
            while not queue.empty():
                queue.get_nowait()
                results.append(await one(client, mode, keys, tokens))

        cpu_before = (await client.get("/bench/cpu")).json()["cpu_s"]
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu_used = (await client.get("/bench/cpu")).json()["cpu_s"] - cpu_before
    return results, elapsed, cpu_used


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per response")
    parser.add_argument("--token-delay-ms", type=float, default=20.0, help="fake decode pace")
    parser.add_argument(
        "--hooks",
        choices=("all", "metering"),
        default="all",
        help="all: every inference hook the app installs; metering: auth/limits/ledger only",
    )
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    from tests.server import free_port

    port = args.port or free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        server = ctx.Process(
            target=serve,
            args=(port, tmp, args.token_delay_ms / 1000, args.hooks, ready),
            daemon=True,
        )
        server.start()
        keys = _wait_ready(server, ready)
        base_url = f"http://127.0.0.1:{port}"
        _wait_listening(base_url)
        samples = {m: [] for m in MODES}
        elapsed = {m: 0.0 for m in MODES}
        cpu = {m: 0.0 for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                res, secs, cpu_s = asyncio.run(
                    phase(base_url, mode, keys, args.requests, args.concurrency, args.tokens)
                )
                samples[mode] += res
                elapsed[mode] += secs
                cpu[mode] += cpu_s
        server.terminate()
        server.join(timeout=10)
    report(samples, elapsed, cpu, args, keys["hooks"])


def _wait_ready(server, ready) -> dict:
    import queue

    while server.is_alive():
        try:
            return ready.get(timeout=0.5)
        except queue.Empty:
            continue
    raise SystemExit("the bench server exited before it was ready (see its traceback above)")


def _wait_listening(base_url: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def report(samples: dict, elapsed: dict, cpu: dict, args, hooks: list[str]) -> None:
    import os

    print(f"gateway hooks: {', '.join(hooks)}; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{args.concurrency} concurrent streams, {args.tokens} tokens/response, "
        f"{args.token_delay_ms:g} ms/token fake backend, {args.rounds} rounds × "
        f"{args.requests} requests per mode; {platform.processor() or platform.machine()}, "
        f"{multiprocessing.cpu_count()} CPUs"
    )
    base = samples["direct"]
    b_total = [t for _, t in base]
    b_ttft = [f for f, _ in base]
    print(
        f"{'mode':<16}{'req/s':>8}{'TTFT p50':>10}{'p99':>8}{'total p50':>11}{'p99':>8}"
        f"{'added p50':>11}{'added p99':>11}{'server CPU/req':>16}{'added':>8}  (ms)"
    )
    base_cpu = cpu["direct"] / len(samples["direct"]) * 1e3
    for mode in MODES:
        total = [t for _, t in samples[mode]]
        ttft = [f for f, _ in samples[mode]]
        rps = len(total) / elapsed[mode]
        row = (
            f"{mode:<16}{rps:>8.0f}{pct(ttft, 50) * 1e3:>10.2f}{pct(ttft, 99) * 1e3:>8.2f}"
            f"{pct(total, 50) * 1e3:>11.2f}{pct(total, 99) * 1e3:>8.2f}"
        )
        cpu_ms = cpu[mode] / len(total) * 1e3
        if mode != "direct":
            row += (
                f"{(pct(total, 50) - pct(b_total, 50)) * 1e3:>11.2f}"
                f"{(pct(total, 99) - pct(b_total, 99)) * 1e3:>11.2f}"
                f"{cpu_ms:>16.2f}{cpu_ms - base_cpu:>8.2f}"
            )
        else:
            row += f"{'':>22}{cpu_ms:>16.2f}"
        print(row)
    print(
        f"TTFT added p50: gateway {(pct([f for f, _ in samples['gateway']], 50) - pct(b_ttft, 50)) * 1e3:.2f} ms; "
        f"mean total: direct {statistics.mean(b_total) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
