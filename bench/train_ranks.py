"""Data-parallel LoRA training: ownllm's trainer on 1 and on N torch.distributed ranks (gloo).

The same tokenised chat examples as bench/train_lora.py, the same global batch,
epochs and seed; N ranks each take every N-th example of a step and all-reduce
the gradients. Reported per run: training tokens/s (wall), tokens per CPU-second
summed over all ranks, and the largest difference between the adapters (the N-rank
adapter must be the 1-rank one to float rounding). Each rank gets
`--threads-per-rank` torch threads. On a box with as many cores as ranks or fewer
this is a correctness check of the parallel path, not a speed-up.

    python -m bench.train_ranks [--ranks 2] [--examples 32] [--batch-size 8] [--dpo]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time


def _train(args, parallel=None) -> dict:
    import torch

    from bench.train_lora import tokenised
    from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
    from ownllm.tuning.model import TrainableModel
    from ownllm.tuning.objectives import Dpo
    from ownllm.tuning.preferences import PreferenceDataset, TokenizedPair
    from ownllm.tuning.trainer import Trainer, TrainSettings

    torch.set_num_threads(args.threads_per_rank)
    data = tokenised(args.model_dir, args.examples, args.max_len)
    objective = None
    if args.dpo:  # pairs of two examples: the preferred one is the earlier
        examples = data.examples
        pairs = [
            TokenizedPair(i, examples[i], examples[i + 1]) for i in range(0, len(examples) - 1, 2)
        ]
        data, objective = PreferenceDataset(pairs), Dpo(0.1)
    model = TrainableModel.from_dir(args.model_dir, LoraSettings(r=8, alpha=16))
    model.reset_lora(0)
    hyper = Hyperparameters(args.epochs, args.batch_size, 1.0, beta=0.1 if args.dpo else None)
    settings = TrainSettings(hyper=hyper, seed=0, max_batch_tokens=4096, warmup_ratio=0.0)
    trainer = Trainer(model, data, settings, objective=objective, parallel=parallel)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if parallel is not None:
        cpu = parallel.sum([cpu])[0]
    return {
        "tokens": data.num_tokens * args.epochs,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "lora": model.lora_state(),
    }


def _rank(rank: int, args, address: str, out: str) -> None:
    import torch

    from ownllm.tuning.parallel import init_group, leave_group

    parallel = init_group(rank, args.ranks, address)
    try:
        result = _train(args, parallel)
        if rank == 0:
            torch.save(result, out)
    finally:
        leave_group()


def main() -> None:
    import torch
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="HF model dir (default: the shipped model's cache)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--dpo", action="store_true", help="DPO on pairs of the examples")
    args = parser.parse_args()
    if args.model_dir is None:
        from ownllm.config import default_home
        from ownllm.models import prepare_model, resolve_model

        args.model_dir = str(
            prepare_model(resolve_model("smollm2-135m-instruct"), default_home()).path
        )
    with open("/proc/cpuinfo") as f:
        words = set(f.read().split())
    flags = [f for f in ("avx512_bf16", "avx512f", "avx2") if f in words]
    print(f"cpu flags: {' '.join(flags)}; load average before: {os.getloadavg()}", flush=True)
    one = _train(args)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        s.close()
        out = os.path.join(tmp, "rank0.pt")
        mp.start_processes(
            _rank, args=(args, address, out), nprocs=args.ranks, start_method="spawn"
        )
        many = torch.load(out, weights_only=True)
    diff = max(float((one["lora"][k] - many["lora"][k]).abs().max()) for k in one["lora"])
    rows = {}
    for name, r in (("1 rank", one), (f"{args.ranks} ranks", many)):
        rows[name] = {
            "tokens_per_s": r["tokens"] / r["seconds"],
            "tokens_per_cpu_s": r["tokens"] / r["cpu_seconds"],
            "tokens": r["tokens"],
            "seconds": r["seconds"],
        }
        print(f"{name:>8}: {json.dumps(rows[name])}", flush=True)
    print(f"max |adapter difference|: {diff:.2e}; load average after: {os.getloadavg()}")
    if diff > 1e-2:
        sys.exit("the adapters differ: the parallel path is broken")


if __name__ == "__main__":
    main()
