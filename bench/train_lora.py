"""LoRA training throughput: ownllm's trainer vs PEFT + transformers `Trainer`, same run.

Both train the same tokenised chat examples (ownllm's chat template and
assistant-only labels), the same LoRA (rank, alpha, all linear targets), the
same batch size, epochs, learning-rate schedule and clipping. Each side runs
in its own subprocess so peak RSS (ru_maxrss) is its own. Reported:
training tokens/s (non-padding tokens / training wall time), peak RSS, and
the final loss — the token-mean loss on assistant tokens of the training set
after training, computed the same way for both.

    python -m bench.train_lora [--examples 64] [--epochs 1] [--batch-size 8]
           [--baselines fp32,bf16] [--ours none,q4_1,int8] [--append bench/RESULTS.md]

`--ours` runs ownllm's trainer once per frozen base: `none` (the compute dtype) or a
quantised one (QLoRA-style, `LoraSettings.base_quantization`); each reports its RSS
after loading the model as well as its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

WORDS = [
    "the",
    "model",
    "adapter",
    "server",
    "tenant",
    "token",
    "data",
    "file",
    "job",
    "worker",
    "loss",
    "step",
    "batch",
    "cache",
    "engine",
    "request",
    "answer",
    "question",
    "simple",
    "clear",
    "short",
    "long",
    "because",
    "therefore",
    "however",
    "example",
    "value",
]


def make_examples(n: int, seed: int = 0) -> list[dict]:
    """Chat examples of varied lengths (20–200 answer words), like real instruction data."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200)))
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: {question}?"},
                    {"role": "assistant", "content": f"Answer: {answer}."},
                ]
            }
        )
    return out


def tokenised(model_dir: str, n: int, max_len: int):
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.tuning.data import Example, tokenize

    tok = Tokenizer.from_dir(model_dir)
    examples = [Example(i + 1, e["messages"]) for i, e in enumerate(make_examples(n))]
    return tokenize(tok, examples, max_len)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run_ours(args) -> dict:
    import torch

    from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
    from ownllm.tuning.model import TrainableModel
    from ownllm.tuning.trainer import Trainer, TrainSettings, evaluate

    torch.set_num_threads(args.threads)
    data = tokenised(args.model_dir, args.examples, args.max_len)
    lora = LoraSettings(r=args.rank, alpha=args.alpha, base_quantization=args.base_quantization)
    before = rss_mb()
    model = TrainableModel.from_dir(args.model_dir, lora)
    loaded = rss_mb() - before
    model.reset_lora(0)
    hyper = Hyperparameters(args.epochs, args.batch_size, args.lr / 1e-3)
    trainer = Trainer(
        model, data, TrainSettings(hyper=hyper, seed=0, max_batch_tokens=4096, warmup_ratio=0.0)
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    final = evaluate(model, data, 4096)["loss"]
    return {
        "tokens": data.num_tokens * args.epochs,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "final_loss": final,
        "load_rss_mb": loaded,
    }


def run_peft(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.set_num_threads(args.threads)
    data = tokenised(args.model_dir, args.examples, args.max_len)
    rows = [
        {
            "input_ids": e.input_ids,
            "labels": [t if m else -100 for t, m in zip(e.input_ids, e.labels_mask)],
        }
        for e in data.examples
    ]
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)

    def collate(batch):  # pad to the longest in the batch (the usual collator)
        width = max(len(r["input_ids"]) for r in batch)
        ids = [r["input_ids"] + [2] * (width - len(r["input_ids"])) for r in batch]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in batch]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }

    training_args = TrainingArguments(
        output_dir=os.path.join(args.tmp, "peft-out"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,  # both sides: linear decay from the peak, no warm-up
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=args.baseline_dtype == "bf16",
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=rows, data_collator=collate)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            logits = model(input_ids=torch.tensor([r["input_ids"]])).logits[0, :-1].float()
            labels = torch.tensor(r["labels"][1:])
            total += float(
                torch.nn.functional.cross_entropy(
                    logits, labels, reduction="sum", ignore_index=-100
                )
            )
            count += int((labels != -100).sum())
    return {
        "tokens": data.num_tokens * args.epochs,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "final_loss": total / count,
    }


def child(args) -> None:
    result = run_ours(args) if args.side == "ours" else run_peft(args)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="HF model dir (default: the shipped model's cache)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--baseline-dtype", choices=("bf16", "fp32"), default="bf16", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--baselines",
        default="fp32,bf16",
        help="PEFT runs to compare: fp32 (Trainer's CPU default), bf16 autocast",
    )
    parser.add_argument(
        "--ours",
        default="none",
        help="ownllm runs: the frozen base of each (none, int8, q8_0, q4_1), comma-separated",
    )
    parser.add_argument("--base-quantization", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--append", help="append the results to this Markdown file")
    parser.add_argument("--side", choices=("ours", "peft"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_dir is None:
        from ownllm.config import default_home
        from ownllm.models import prepare_model, resolve_model

        args.model_dir = str(
            prepare_model(resolve_model("smollm2-135m-instruct"), default_home()).path
        )
    if args.side:
        child(args)
        return
    results = {}
    ours_sides = ["ours" if q == "none" else f"ours-{q}" for q in args.ours.split(",")]
    sides = [f"peft-{d}" for d in filter(None, args.baselines.split(","))] + ours_sides
    for side in sides:
        argv = [a for a in sys.argv[1:]]
        cmd = [
            sys.executable,
            "-m",
            "bench.train_lora",
            *argv,
            "--side",
            side.split("-")[0],
            "--model-dir",
            args.model_dir,
        ]
        if side.startswith("peft-"):
            cmd += ["--baseline-dtype", side.split("-")[1]]
        elif side.startswith("ours-"):
            cmd += ["--base-quantization", side.split("-", 1)[1]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT ") :])
        r = results[side]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]
        print(
            f"{side:>10}: {r['tokens_per_s']:7.1f} tokens/s  {r['tokens_per_cpu_s']:7.1f} "
            f"tokens/CPU-s  peak RSS {r['peak_rss_mb']:6.0f} MB  final loss "
            f"{r['final_loss']:.4f}  ({r['tokens']} tokens in {r['seconds']:.1f}s)"
            + (f"  model load +{r['load_rss_mb']:.0f} MB RSS" if "load_rss_mb" in r else ""),
            flush=True,
        )
    ours = results[ours_sides[0]]
    for side in sides:
        if side == ours_sides[0]:
            continue
        # PEFT: ownllm against it; a quantised base: it against ownllm's first base
        a, b = (ours, results[side]) if side.startswith("peft") else (results[side], ours)
        label = f"ownllm vs {side}" if side.startswith("peft") else f"{side} vs {ours_sides[0]}"
        print(
            f"{label}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
            f"{a['tokens_per_cpu_s'] / b['tokens_per_cpu_s']:.2f}x tokens/CPU-s, "
            f"peak RSS {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x, final loss "
            f"{(a['final_loss'] - b['final_loss']) / b['final_loss']:+.1%}"
        )
    if args.append:
        write_results(args, results, sides)


def write_results(args, results: dict, sides: list[str]) -> None:
    import platform

    import torch

    lines = [
        "",
        "## Fine-tuning",
        "",
        f"`python -m bench.train_lora --examples {args.examples} --epochs {args.epochs} "
        f"--batch-size {args.batch_size} --rank {args.rank} --threads {args.threads}`"
        f" — SmolLM2-135M-Instruct, LoRA r={args.rank} alpha={args.alpha:g} on all linear "
        f"layers, {args.examples} chat examples of varied length, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| trainer | tokens/s (wall) | tokens per CPU-second | peak RSS (MB) | final loss |",
        "|---|---|---|---|---|",
    ]
    ours_sides = [side for side in sides if side.startswith("ours")]
    ours = results[ours_sides[0]]
    for side in sides:
        r = results[side]
        if side.startswith("ours"):
            name = "ownllm" + (f", {side[5:]} base" if side != "ours" else "")
        else:
            name = f"PEFT + transformers Trainer ({side[5:]})"
        speed = (
            ""
            if side.startswith("ours")
            else (
                f" (ownllm: {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x wall, "
                f"{ours['tokens_per_cpu_s'] / r['tokens_per_cpu_s']:.2f}x CPU, loss "
                f"{(ours['final_loss'] - r['final_loss']) / r['final_loss']:+.1%})"
            )
        )
        lines.append(
            f"| {name}{speed} | {r['tokens_per_s']:.1f} | {r['tokens_per_cpu_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['final_loss']:.4f} |"
        )
    lines.append("")
    with open(args.append, "a") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
