"""The vllm backend's cost: ownllm's gateway in front of one vLLM replica against the same
vLLM server called directly, on the many-adapter workload, in one run.

One vLLM OpenAI-compatible server (its CPU build, `.venv-vllm`; or `--vllm-url`, one
already running with LoRA enabled and runtime loading allowed) serves the shipped model.
`--adapters` random rank-8 adapters are registered in a fresh ownllm data dir, and an
`ownllm serve --backend vllm=URL` gateway process (open mode on loopback: the admin
principal; no engine of its own) serves them. Two modes take turns, `--rounds` times,
each a closed loop of `--concurrency` streams over `--requests` requests spread
round-robin over the base model and the adapters:

- `direct`: POST /v1/completions to vLLM with the token ids ownllm's chat template makes,
  streamed with usage; each adapter is loaded before the gateway starts, under the name the
  gateway's vllm backend gives it (its registry id), so both modes run the very same LoRAs
  (under names of their own, the modes' adapters would evict each other from vLLM's
  `max_cpu_loras` cache at every switch of mode);
- `gateway`: POST /v1/chat/completions to the gateway with the same kind of chat (the
  gateway renders and tokenises it, resolves the adapter in the registry, and its vllm
  backend sends the ids to the same server), streamed with usage.

Every request is greedy with ignore_eos and `--max-tokens` tokens, and every prompt is
distinct (random words), so neither mode gains from vLLM's prefix cache. A warm-up round
loads every adapter in both modes first. Reported: output tokens/s of each mode (total
tokens / wall time of its blocks), gateway/direct throughput, and TTFT p50/p99 of each
with the gateway's added p50, and the gateway process's CPU time per request and per token
(/proc, user + system: it is what the gateway takes from vLLM on a box whose cores they
share). Both share the machine's cores with vLLM: the numbers say what the whole path costs
on this box, with the load average beside them.

`--fake-vllm` puts bench/_fake_vllm.py (vLLM's wire format, next to no CPU, one token every
`--itl-ms`) where vLLM was, to measure the gateway's own cost alone; `--profile FILE` runs
the gateway under cProfile and prints where its time went.

Usage: python -m bench.vllm_gateway [--vllm-url URL | --fake-vllm] [--adapters 8]
       [--requests 48] [--concurrency 8] [--max-tokens 32] [--rounds 2] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import _engine_common as common

SERVED = "smollm2-135m-instruct"
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


def chat(rng: random.Random, num_words: int) -> list[dict[str, str]]:
    text = " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(num_words))
    return [{"role": "user", "content": f"Summarise: {text}"}]


async def stream(client: httpx.AsyncClient, url: str, body: dict, is_chat: bool):
    """(ttft seconds, completion tokens) of one streamed request."""
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code} {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{url}: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content") if is_chat else choice["text"]
                if text and ttft is None:
                    ttft = time.perf_counter() - start
    return ttft, tokens


async def run_block(mode: str, jobs: list[dict], concurrency: int, urls: dict) -> dict:
    queue = list(jobs)
    ttfts, tokens = [], 0
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens
            while queue:
                job = queue.pop()
                ttft, n = await stream(client, urls[mode], job[mode], mode == "gateway")
                ttfts.append(ttft)
                tokens += n

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"ttfts": ttfts, "tokens": tokens, "wall": wall}


def make_jobs(rng, n, adapters: list[tuple[str, str]], tokenizer, max_tokens) -> list[dict]:
    """Per request, the direct body and the gateway body (different prompts of one shape)."""
    jobs = []
    sampling = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
    groups = [None, *adapters]
    for i in range(n):
        group = groups[i % len(groups)]
        direct_model = SERVED if group is None else group[0]
        gateway_model = SERVED if group is None else group[1]
        ids = tokenizer.encode_chat(chat(rng, 40))
        jobs.append(
            {
                "direct": {"model": direct_model, "prompt": ids, **sampling},
                "gateway": {"model": gateway_model, "messages": chat(rng, 40), **sampling},
            }
        )
    return jobs


def start_vllm(model: Path, out: Path, max_loras: int):
    from ownllm.backends.vllm import VllmProcess, vllm_command, vllm_model_dir

    port = common_free_port()
    served_dir = vllm_model_dir(model, out / "vllm-model")  # without the cache's quantised blocks
    argv = vllm_command(str(common.VLLM_PYTHON), model_dir=str(served_dir), served_name=SERVED,
                        port=port, max_loras=max_loras, max_lora_rank=8)  # fmt: skip
    process = VllmProcess(argv, f"http://127.0.0.1:{port}", out / "vllm.log")
    asyncio.run(process.start())
    return process


def cpu_flags() -> str:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "?"
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in words) or "none"


def common_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(data_dir: Path, model: Path, paths: list[Path]) -> list[str]:
    from ownllm.adapters.registry import register_adapter
    from ownllm.store.blobs import DataDir
    from ownllm.store.db import Database

    home = DataDir(data_dir).ensure()
    db = Database.open(f"sqlite:///{data_dir / 'ownllm.db'}")
    ids = [
        register_adapter(db, home, p, name=f"bench-{i}", tenant_id="acme", base_model=SERVED,
                         base_sha256="", source="imported").id
        for i, p in enumerate(paths)
    ]  # fmt: skip
    db.close()
    return ids


def start_gateway(
    data_dir: Path, model: Path, vllm_url: str, profile: str = ""
) -> tuple[subprocess.Popen, str]:
    port = common_free_port()
    env = {**os.environ, "OWNLLM_SERVER_RUN_WORKER": "false", "OWNLLM_BATCH_RUN_WORKER": "false"}
    env.pop("OWNLLM_DATABASE_URL", None)
    log = open(data_dir / "gateway.log", "w")  # noqa: SIM115
    python = [
        sys.executable,
        *(["-m", "bench._profiled", profile] if profile else ["-m", "ownllm"]),
    ]
    proc = subprocess.Popen(
        [*python, "serve", "--port", str(port), "--model", str(model),
         "--name", SERVED, "--data-dir", str(data_dir), "--backend", f"vllm={vllm_url}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(data_dir / 'gateway.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("gateway not ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_fake_vllm(out: Path, itl_ms: float) -> tuple[subprocess.Popen, str]:
    port = common_free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._fake_vllm", "--port", str(port), "--itl-ms", str(itl_ms)],
        stdout=open(out / "fake-vllm.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the fake vLLM server did not start")


def print_profile(path: str, top: int = 40) -> None:
    import pstats

    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-url", default="")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fake-vllm", action="store_true")
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--profile", default="")
    args = parser.parse_args()

    from ownllm.models.tokenizer import Tokenizer

    model = common.model_dir()
    tokenizer = Tokenizer.from_dir(model)
    print(common.machine_line(), flush=True)
    print(f"CPU flags: {cpu_flags()}", flush=True)
    print(f"load average at start: {common.load_average()}", flush=True)
    out = Path(tempfile.mkdtemp(prefix="ownllm-vllm-gateway-"))
    vllm = fake = None
    if args.vllm_url:
        vllm_url = args.vllm_url.rstrip("/")
    elif args.fake_vllm:
        fake, vllm_url = start_fake_vllm(out, args.itl_ms)
        print(f"upstream: the fake vLLM (bench/_fake_vllm.py, {args.itl_ms} ms a token)")
    else:
        if not common.VLLM_PYTHON.exists():
            print("skipped: vLLM is not installed (.venv-vllm missing: run `make vllm-venv`)")
            return 0
        vllm = start_vllm(model, out, max_loras=min(args.adapters, 8))
        vllm_url = vllm.url
    gateway = None
    try:
        paths = common.make_adapters(model, args.adapters, rank=8)
        ids = register(out / "home", model, paths)
        for adapter_id, path in zip(ids, paths):  # the names the gateway's backend uses
            loaded = httpx.post(f"{vllm_url}/v1/load_lora_adapter",
                                json={"lora_name": adapter_id, "lora_path": str(path)}, timeout=120)  # fmt: skip
            if loaded.status_code != 200 and "already" not in loaded.text:
                raise RuntimeError(f"vLLM could not load {path}: {loaded.text[:300]}")
        gateway, gateway_url = start_gateway(out / "home", model, vllm_url, args.profile)
        urls = {"direct": f"{vllm_url}/v1/completions",
                "gateway": f"{gateway_url}/v1/chat/completions"}  # fmt: skip
        pairs = [(adapter_id, adapter_id) for adapter_id in ids]
        rng = random.Random(0)
        warm = make_jobs(rng, len(pairs) + 1, pairs, tokenizer, 2)
        for mode in ("direct", "gateway"):
            asyncio.run(run_block(mode, warm, 2, urls))
        if args.profile:
            gateway.send_signal(signal.SIGUSR1)  # the profile starts after the warm-up
        results = {"direct": [], "gateway": []}
        for r in range(args.rounds):
            for mode in ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct"):
                jobs = make_jobs(rng, args.requests, pairs, tokenizer, args.max_tokens)
                cpu = cpu_seconds(gateway.pid)
                block = asyncio.run(run_block(mode, jobs, args.concurrency, urls))
                block["gateway_cpu_s"] = cpu_seconds(gateway.pid) - cpu
                block["requests"] = len(jobs)
                results[mode].append(block)
                print(f"round {r} {mode}: {block['tokens'] / block['wall']:.1f} tok/s, gateway "
                      f"CPU {block['gateway_cpu_s']:.2f} s (load {common.load_average()})",
                      flush=True)  # fmt: skip
        summary = {}
        for mode, blocks in results.items():
            ttfts = [t for b in blocks for t in b["ttfts"]]
            tokens = sum(b["tokens"] for b in blocks)
            cpu = sum(b["gateway_cpu_s"] for b in blocks)
            summary[mode] = {
                "tok_s": tokens / sum(b["wall"] for b in blocks),
                "ttft_p50_ms": 1000 * common.percentile(ttfts, 50),
                "ttft_p99_ms": 1000 * common.percentile(ttfts, 99),
                "gateway_cpu_ms_per_request": 1000 * cpu / sum(b["requests"] for b in blocks),
                "gateway_cpu_us_per_token": 1e6 * cpu / max(tokens, 1),
            }
        d, g = summary["direct"], summary["gateway"]
        print(json.dumps(summary, indent=2))
        print(
            f"gateway/direct throughput {g['tok_s'] / d['tok_s']:.3f}; TTFT p50 added "
            f"{g['ttft_p50_ms'] - d['ttft_p50_ms']:+.1f} ms (p99 {g['ttft_p99_ms']:.0f} vs "
            f"{d['ttft_p99_ms']:.0f} ms); {args.adapters} adapters, {args.requests} requests x "
            f"{args.rounds} rounds per mode, concurrency {args.concurrency}, {args.max_tokens} "
            f"tokens each; load average at end: {common.load_average()}"
        )
    finally:
        if gateway is not None:
            # SIGINT: uvicorn re-raises a SIGTERM it handled, which would end the process
            # before cProfile writes its file
            gateway.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
            gateway.wait(timeout=60)
        if vllm is not None:
            vllm.stop()
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=30)
    if args.profile:
        print_profile(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
