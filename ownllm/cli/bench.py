"""`ownllm bench capacity`: the saturated throughput of the served model on this box.

    ownllm bench capacity [--requests 192] [--concurrency 64] [--input-tokens 400]
        [--output-tokens 200]

Loads the served model the way `ownllm serve` does (same config, backend, dtype), sends
`--requests` requests of random token ids (no prefix-cache hits), `--concurrency` in
flight at once, each generating exactly `--output-tokens` tokens (greedy, EOS ignored),
after a short warm-up. Tokens per second is every prompt and output token over the wall
time from the first request to the last token. The result is stored in the data dir
(`capacity.json`, see `ownllm.gateway.capacity`) with the model, dtype, device, CPU
flags and date; `ownllm cost --scenario` sizes boxes from it. Takes a few minutes on a
CPU: run it on the box (and with the config) you serve with, with nothing else running.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

WARMUP_REQUESTS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.common import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("capacity", help="measure and store the saturated tokens/s of this box")
    add_config_arguments(p)
    p.add_argument("--model", help="served model (default: the config's)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument(
        "--requests", type=int, default=0, help="requests in all (default 3 × concurrency)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="requests in flight at once (default: the engine's max_num_seqs)",
    )
    p.add_argument("--input-tokens", type=int, default=400, help="prompt tokens per request")
    p.add_argument("--output-tokens", type=int, default=200, help="output tokens per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the stored record as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ownllm.cli.common import ConfigError, config_from_args, fail, server_state
    from ownllm.errors import OwnLLMError

    if args.input_tokens < 1 or args.output_tokens < 1:
        return fail("--input-tokens and --output-tokens must be at least 1")
    if args.requests < 0 or args.concurrency < 0:
        return fail("--requests and --concurrency must be positive")
    try:
        config = config_from_args(args, {"model": {"model": args.model, "dtype": args.dtype}})
    except ConfigError as e:
        return fail(str(e))
    concurrency = args.concurrency or config.engine.max_num_seqs
    requests = args.requests or 3 * concurrency
    from ownllm.api.app import start_backend

    state = server_state(config)
    try:
        backend = start_backend(state)
    except ConfigError as e:
        state.db.close()
        return fail(str(e))
    except OwnLLMError as e:
        state.db.close()
        return fail(e.message)
    info = backend.model_info
    if args.input_tokens + args.output_tokens > info.max_model_len:
        state.db.close()
        return fail(
            f"{args.input_tokens} + {args.output_tokens} tokens do not fit the model's context "
            f"({info.max_model_len}); lower --input-tokens or --output-tokens"
        )
    print(
        f"Measuring {info.id} ({info.dtype}): {requests} requests of {args.input_tokens} in + "
        f"{args.output_tokens} out tokens, {concurrency} at once ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        result = asyncio.run(
            measure(
                backend,
                requests=requests,
                concurrency=concurrency,
                input_tokens=args.input_tokens,
                output_tokens=args.output_tokens,
                vocab_size=info.vocab_size,
                seed=args.seed,
            )
        )
    except OwnLLMError as e:
        return fail(f"the capacity run failed: {e.message}")
    finally:
        if state.db is not None:
            state.db.close()
    from ownllm.gateway import capacity

    engine = getattr(backend, "engine", None)
    device = str(engine.device) if engine is not None else type(backend).__name__
    prompt, output, seconds = result
    record = capacity.Capacity(
        model=info.id,
        dtype=info.dtype,
        device=device,
        cpu_flags=capacity.cpu_flags(),
        measured_at=capacity.now_iso(),
        tokens_per_s=(prompt + output) / seconds,
        output_tokens_per_s=output / seconds,
        prompt_tokens=prompt,
        output_tokens=output,
        seconds=seconds,
        requests=requests,
        concurrency=concurrency,
        input_tokens_per_request=args.input_tokens,
        output_tokens_per_request=args.output_tokens,
        machine=capacity.machine(),
    )
    path = capacity.save(state.data_dir.root, record)
    if args.json:
        print(json.dumps(asdict(record), indent=2))
    else:
        print(
            f"Capacity: {record.tokens_per_s:,.0f} tokens/s per box "
            f"({record.output_tokens_per_s:,.0f} output tokens/s): {prompt:,} prompt + "
            f"{output:,} output tokens in {seconds:,.1f} s.\n"
            f"{record.model} {record.dtype} on {record.device}, {record.machine}, CPU flags "
            f"{record.cpu_flags}, {record.measured_at}.\n"
            f"Stored in {path}; `ownllm cost --scenario ...` sizes boxes from it."
        )
    return 0


async def measure(
    backend,
    *,
    requests: int,
    concurrency: int,
    input_tokens: int,
    output_tokens: int,
    vocab_size: int,
    seed: int = 0,
) -> tuple[int, int, float]:
    """(prompt tokens, output tokens, wall seconds) of `requests` requests through
    `backend`, `concurrency` at a time, after a warm-up that is not counted."""
    from ownllm.backends.base import GenerateRequest, SamplingParams

    rng = random.Random(seed)
    low = min(20, vocab_size // 2)  # above the special tokens of most vocabularies
    sampling = SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True)

    async def one(request_id: str, sem: asyncio.Semaphore) -> tuple[int, int]:
        ids = [rng.randrange(low, vocab_size) for _ in range(input_tokens)]
        request = GenerateRequest(request_id, ids, sampling)
        prompt = output = 0
        async with sem:
            async for delta in backend.generate(request):
                prompt = delta.num_prompt_tokens or prompt
                output = max(output, delta.num_output_tokens)
        return prompt or input_tokens, output

    await backend.start()
    try:
        warm = asyncio.Semaphore(WARMUP_REQUESTS)
        await asyncio.gather(*(one(f"capacity-warmup-{i}", warm) for i in range(WARMUP_REQUESTS)))
        sem = asyncio.Semaphore(concurrency)
        start = time.perf_counter()
        done = await asyncio.gather(*(one(f"capacity-{i}", sem) for i in range(requests)))
        seconds = time.perf_counter() - start
    finally:
        await backend.shutdown()
    return sum(p for p, _ in done), sum(o for _, o in done), seconds
