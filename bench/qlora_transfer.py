"""What a quantised base does to a LoRA adapter, both ways, on the shipped model.

One adapter per frozen base learns the same behaviour (answers that open with "Ahoy,
matey!", the data of bench/_pirate.py: 32 examples trained, 10 held out,
3 epochs, r=8 on all linear layers, the same seed): on the bf16 base, and on quantised
bases (QLoRA-style, `LoraSettings.base_quantization`). Then every adapter on every base:
- held-out loss: the token-mean loss of the 10 held-out answers through the trainer's
  forward on that base;
- greedy: on 20 held-out questions, served by the engine on that base, how many answers
  open with the mark, and how many tokens equal the same adapter's answer on the bf16
  base before the first divergence (24 tokens at most).

Serving bases: the engine in bf16, dense or with the quantised types of
`model.quantization`. The shipped GGUF is Q4_1 already, so its q4_1 blocks are the
dequantised cache's weights exactly: say so when reading the q4_1 rows.

Serving bases (`--serve`, default the training bases) may add `auto`: the file's own mix
(q4_1 layers, q8_0 embedding and head), what a q4 deployment serves; `q4_1` there puts the
tied head in 4 bits as well, where the q4_1 trainer keeps it in bf16.

`--keep DIR` keeps each trained adapter in DIR and reuses one already there, so the
trainings and the evaluation can run apart (`--train-only` stops after training).

Usage: python -m bench.qlora_transfer [--bases none,q4_1,int8] [--serve none,auto,q4_1]
           [--keep DIR] [--train-only] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench._pirate import ANSWERS, HELD_OUT, MARK, QUESTIONS
from bench.dtype_quality import cpu_flags, new_engine
from ownllm.backends.base import AdapterWeight, GenerateRequest, SamplingParams

NUM_TRAIN, MAX_TOKENS = 32, 24


def dataset(tok, pairs):
    from ownllm.tuning.data import Example, tokenize

    examples = [
        Example(i + 1, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for i, (q, a) in enumerate(pairs)
    ]
    return tokenize(tok, examples, 256)


def train(model_dir: Path, data, kind: str, out: Path) -> dict[str, torch.Tensor]:
    """The adapter trained on the `kind` base, written to `out` (PEFT) and `out`/state.pt;
    one already there is read back instead."""
    from ownllm.formats.peft import PeftAdapter, modules_of, write_adapter
    from ownllm.tuning.hyperparams import Hyperparameters, LoraSettings
    from ownllm.tuning.model import TrainableModel
    from ownllm.tuning.trainer import Trainer, TrainSettings

    if (out / "state.pt").is_file():
        print(f"the adapter trained on the {kind} base: reused from {out}", flush=True)
        return torch.load(out / "state.pt", weights_only=True)
    cfg = LoraSettings(r=8, alpha=16, base_quantization=kind)
    model = TrainableModel.from_dir(model_dir, cfg)
    model.reset_lora(0)
    start = time.perf_counter()
    Trainer(model, data, TrainSettings(Hyperparameters(3, 4, 1.0), seed=0)).run()
    seconds = time.perf_counter() - start
    print(
        f"trained on the {kind} base in {seconds:.0f} s ({data.num_tokens * 3} tokens); "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    write_adapter(out, PeftAdapter(cfg.peft_config("base"), modules_of(model.lora_state())))
    torch.save(model.lora_state(), out / "state.pt")
    return model.lora_state()


def held_out_loss(model_dir: Path, data, kind: str, states: dict) -> dict[str, float]:
    from ownllm.tuning.hyperparams import LoraSettings
    from ownllm.tuning.model import TrainableModel
    from ownllm.tuning.trainer import evaluate

    model = TrainableModel.from_dir(model_dir, LoraSettings(r=8, alpha=16, base_quantization=kind))
    out = {}
    for name, state in states.items():
        model.load_lora_state(state)
        out[name] = evaluate(model, data, 4096)["loss"]
    return out


def greedy(engine, prompts: list[list[int]], adapter: str) -> list[list[int]]:
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)
    for i, ids in enumerate(prompts):
        engine.add_request(GenerateRequest(str(i), ids, sampling, (AdapterWeight(adapter),)))
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.delta.token_ids)
    return [out[str(i)] for i in range(len(prompts))]


def main() -> None:
    from bench._engine_common import model_dir as shipped_dir
    from ownllm.models.tokenizer import Tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", default="none,q4_1,int8", help="training bases")
    parser.add_argument("--serve", default="", help="serving bases (default: --bases)")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the adapters here")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = args.bases.split(",")
    serving = args.serve.split(",") if args.serve else kinds
    print(f"CPU flags: {cpu_flags()}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    model = shipped_dir()
    tok = Tokenizer.from_dir(model)
    pairs = [(q, f"{MARK} {a}") for q, a in zip(QUESTIONS, ANSWERS)]
    train_data, valid_data = dataset(tok, pairs[:NUM_TRAIN]), dataset(tok, pairs[NUM_TRAIN:])
    prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in HELD_OUT]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        states = {k: train(model, train_data, k, root / f"adapter-{k}") for k in kinds}
        if args.train_only:
            return
        losses = {k: held_out_loss(model, valid_data, k, states) for k in kinds}
        print(f"held-out losses done; load average {os.getloadavg()[0]:.2f}", flush=True)
        answers: dict[str, dict[str, list[list[int]]]] = {}
        for serve in serving:
            engine = new_engine(model, "bfloat16", args.threads, serve)
            print(f"serving on the bf16 engine, model.quantization = {serve}", flush=True)
            for k in kinds:
                engine.load_adapter(k, str(root / f"adapter-{k}"))
            answers[serve] = {k: greedy(engine, prompts, k) for k in kinds}
            del engine

    print(f"\nheld-out loss ({len(pairs) - NUM_TRAIN} answers), rows: trained on; columns: base")
    print("| adapter trained on | " + " | ".join(f"{k} base" for k in kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    for trained in kinds:
        cells = " | ".join(f"{losses[base][trained]:.4f}" for base in kinds)
        print(f"| {trained} | {cells} |")
    print(
        f"\ngreedy on {len(HELD_OUT)} held-out questions: answers opening with {MARK!r}, and "
        f"mean tokens identical to the same adapter served on {serving[0]}"
    )
    print("| adapter trained on | " + " | ".join(f"served on {k}" for k in serving) + " |")
    print("|---" * (len(serving) + 1) + "|")
    for trained in kinds:
        cells = []
        ref = answers[serving[0]][trained]
        for serve in serving:
            got = answers[serve][trained]
            marked = sum(tok.decode(a).startswith(MARK) for a in got)
            same = sum(
                next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                for a, b in zip(got, ref)
            ) / len(got)
            cells.append(f"{marked}/{len(got)}, {same:.1f} tok")
        print(f"| {trained} | {' | '.join(cells)} |")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
