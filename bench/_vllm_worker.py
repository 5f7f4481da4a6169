"""Runs vLLM's CPU build on a benchmark workload; started by the engine benchmarks as
`.venv-vllm/bin/python bench/_vllm_worker.py JOB.json OUT.json` (vLLM lives in its own
virtualenv, made by `make bench-deps`, so this file imports nothing from ownllm).

JOB: {"model", "dtype", "adapters": [paths], "max_loras", "max_lora_rank",
"max_model_len", "runs": [{"name", "requests": [{"request_id", "prompt_ids",
"max_tokens", "adapter", "arrival"}]}]}. Each run is driven step by step through
`LLM.llm_engine`, adding each request when its arrival time has passed, and OUT
gets, per run, every request's arrival and output-token timestamps (seconds since
the run started) — the same trace the in-process systems produce.
"""

from __future__ import annotations

import json
import os
import sys
import time


def drive(engine, requests: list[dict], lora_requests: list) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    pending = sorted(requests, key=lambda r: r["arrival"])
    arrivals = {r["request_id"]: r["arrival"] for r in requests}
    tokens: dict[str, list[float]] = {}
    start = time.perf_counter()
    while pending or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while pending and pending[0]["arrival"] <= now:
            r = pending.pop(0)
            params = SamplingParams(
                max_tokens=r["max_tokens"],
                temperature=0.0,
                ignore_eos=True,
                output_kind=RequestOutputKind.DELTA,
            )
            lora = None if r["adapter"] is None else lora_requests[r["adapter"]]
            engine.add_request(
                r["request_id"], {"prompt_token_ids": r["prompt_ids"]}, params, lora_request=lora
            )
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[0]["arrival"] - now))
            continue
        outputs = engine.step()
        t = time.perf_counter() - start
        for out in outputs:
            new = len(out.outputs[0].token_ids)  # DELTA: only this step's tokens
            tokens.setdefault(out.request_id, []).extend([t] * new)
    return {"arrivals": arrivals, "tokens": tokens, "wall": time.perf_counter() - start}


def main() -> int:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    started = time.perf_counter()
    kwargs = {}
    if job["adapters"]:
        kwargs = {
            "enable_lora": True,
            "max_loras": job["max_loras"],
            "max_lora_rank": job["max_lora_rank"],
        }
    llm = LLM(
        model=job["model"],
        dtype=job["dtype"],
        max_model_len=job.get("max_model_len", 2048),
        seed=0,
        **kwargs,
    )
    loras = [LoRARequest(f"a{i}", i + 1, p) for i, p in enumerate(job["adapters"])]
    result = {"load_s": time.perf_counter() - started, "runs": []}
    engine = llm.llm_engine
    warm = job.get("warmup")
    if warm:
        drive(engine, warm, loras)
    for run in job["runs"]:
        out = drive(engine, run["requests"], loras)
        out["name"] = run["name"]
        result["runs"].append(out)
        print(f"vllm run {run['name']}: {out['wall']:.1f}s", file=sys.stderr, flush=True)
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
