"""`ownllm tune data.jsonl`: upload, create a fine-tuning job, follow it, print the model name.

Talks to a running `ownllm serve` (its background worker trains the job) over
the OpenAI API, so it works the same against a remote server. Progress shows
the step, the training loss and the estimated time left.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ownllm.cli.jobs import add_client_arguments

    parser.add_argument("training_file", type=Path,
                        help="chat JSONL training data (preference JSONL with --method dpo)")  # fmt: skip
    parser.add_argument("--validation", type=Path, help="chat JSONL validation data")
    parser.add_argument("--model", help="base model or ft: model (default: the served base)")
    parser.add_argument("--suffix", help="added to the fine-tuned model's name")
    parser.add_argument("--method", choices=("supervised", "dpo"), default="supervised",
                        help="supervised (chat examples) or dpo (preference pairs)")  # fmt: skip
    parser.add_argument("--beta", type=float, help="DPO beta (default auto: 0.1)")
    parser.add_argument("--epochs", type=int, help="number of epochs (default auto)")
    parser.add_argument("--lr-mult", type=float, help="learning-rate multiplier (default auto)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default auto)")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same adapter)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    add_client_arguments(parser)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _show(event: dict, job: dict) -> None:
    """A metrics event as a progress bar on a terminal (a line per step otherwise)."""
    data = event.get("data") or {}
    if "step" not in data:
        if not sys.stderr.isatty():
            print(event["message"], file=sys.stderr)
        return
    step, total, loss = data["step"], data["total_steps"], data.get("train_loss", float("nan"))
    if sys.stderr.isatty():
        left = max(0, (job.get("estimated_finish") or time.time()) - time.time())
        eta = f"{int(left) // 60}m{int(left) % 60:02d}s"
        line = f"\r{_bar(step, total)} step {step}/{total}  loss {loss:.4f}  ETA {eta} "
        print(line, end="", file=sys.stderr, flush=True)
    else:
        print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ownllm.cli.common import fail
    from ownllm.cli.jobs import ApiError, Client

    client = Client(args.base_url, args.api_key)
    for path in (args.training_file, args.validation):
        if path is not None and not path.is_file():
            return fail(f"{path} does not exist")
    try:
        model = args.model or client.request("GET", "/models")["data"][0]["id"]
        train = client.upload(args.training_file)
        body: dict = {"model": model, "training_file": train["id"]}
        if args.validation:
            body["validation_file"] = client.upload(args.validation)["id"]
        hp = {
            "n_epochs": args.epochs,
            "learning_rate_multiplier": args.lr_mult,
            "batch_size": args.batch_size,
        }
        if args.method == "dpo":
            hp["beta"] = args.beta
        elif args.beta is not None:
            return fail("--beta is a DPO setting: add --method dpo")
        hp = {k: v for k, v in hp.items() if v is not None}
        body["method"] = {"type": args.method, args.method: {"hyperparameters": hp}}
        if args.suffix:
            body["suffix"] = args.suffix
        if args.seed is not None:
            body["seed"] = args.seed
        job = client.request("POST", "/fine_tuning/jobs", body)
        print(f"job {job['id']} created ({job['status']})", file=sys.stderr)
        if args.no_wait:
            print(job["id"])
            return 0
        seen: set[str] = set()
        while True:
            job = client.request("GET", f"/fine_tuning/jobs/{job['id']}")
            events = client.request("GET", f"/fine_tuning/jobs/{job['id']}/events?limit=100")
            for event in reversed(events["data"]):  # oldest first
                if event["id"] not in seen:
                    seen.add(event["id"])
                    _show(event, job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1.0)
        print(file=sys.stderr)
    except ApiError as e:
        return fail(str(e), code=1)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job goes on: ownllm jobs show {job['id']}", file=sys.stderr
        )
        return 130
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        return fail(f"job {job['id']} {job['status']}: {error.get('message', '')}", code=1)
    print(job["fine_tuned_model"])
    return 0
