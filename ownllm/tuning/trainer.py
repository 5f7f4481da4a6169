"""The LoRA training loop: epochs of shuffled steps, token-normalised accumulation, checkpoints.

One optimizer step takes `batch_size` examples. They are packed into
micro-batches of at most `max_batch_tokens` rows (padding-free, see
`ownllm.tuning.model`); each micro-batch's summed token loss is divided by
the number of trained tokens of the whole step before backward, so the
gradient is the per-token mean however the step was split. AdamW on the
LoRA parameters only, linear warm-up then linear decay, gradient clipping at
1.0. The example order of epoch e comes from `seed` and e alone, so a run
resumed from an epoch checkpoint continues exactly as it would have.

The loop talks to the outside through `Callbacks` (metrics, checkpoints, a
cancel check between micro-batches); it knows nothing of jobs or databases.

Left out: multi-process data parallelism, mixed-length curriculum, early stopping.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ownllm.tuning.data import Dataset, TokenizedExample
from ownllm.tuning.hyperparams import Hyperparameters
from ownllm.tuning.model import TrainableModel, pack


class Cancelled(Exception):
    """The job was cancelled; training stopped between micro-batches."""


class Callbacks(Protocol):
    def on_step(self, metrics: dict) -> None: ...
    def on_epoch_end(self, epoch: int, step: int, state: dict, metrics: dict) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass
class TrainSettings:
    hyper: Hyperparameters
    seed: int = 0
    max_batch_tokens: int = 2048
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    threads: int = 0


@dataclass
class TrainResult:
    step: int
    trained_tokens: int
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    order = list(range(num_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def micro_batches(
    examples: list[TokenizedExample], max_tokens: int
) -> list[list[TokenizedExample]]:
    """Greedy packing in order: each micro-batch holds at most `max_tokens` rows (or one example)."""
    out, current, size = [], [], 0
    for example in examples:
        n = len(example.input_ids)
        if current and size + n > max_tokens:
            out.append(current)
            current, size = [], 0
        current.append(example)
        size += n
    if current:
        out.append(current)
    return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up then linear decay."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


@torch.no_grad()
def evaluate(model: TrainableModel, data: Dataset, max_tokens: int) -> dict:
    """Mean token loss and accuracy over the trained tokens of `data`."""
    total_loss, correct, tokens = 0.0, 0, 0
    for group in micro_batches(data.examples, max_tokens):
        batch = pack([(e.input_ids, e.labels_mask) for e in group])
        loss, ok = model.loss(batch)
        total_loss += float(loss)
        correct += ok
        tokens += len(batch.targets)
    return {"loss": total_loss / max(1, tokens), "mean_token_accuracy": correct / max(1, tokens)}


class Trainer:
    def __init__(
        self,
        model: TrainableModel,
        train: Dataset,
        settings: TrainSettings,
        validation: Dataset | None = None,
    ) -> None:
        self.model, self.train_data, self.validation, self.settings = (
            model,
            train,
            validation,
            settings,
        )
        hp = settings.hyper
        self.steps_per_epoch = math.ceil(len(train.examples) / hp.batch_size)
        self.total_steps = self.steps_per_epoch * hp.n_epochs
        self.warmup = max(1, int(self.total_steps * settings.warmup_ratio))
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=hp.learning_rate, betas=(0.9, 0.999), weight_decay=settings.weight_decay
        )
        self.step = 0
        self.epoch = 0
        self.trained_tokens = 0

    def state(self) -> dict:
        """What resuming needs: LoRA weights, optimizer, counters (saved at epoch ends)."""
        return {
            "lora": self.model.lora_state(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "trained_tokens": self.trained_tokens,
        }

    def load_state(self, state: dict) -> None:
        self.model.load_lora_state(state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.trained_tokens = int(state["trained_tokens"])

    def _train_step(self, examples: list[TokenizedExample], callbacks: Callbacks | None) -> dict:
        hp, s = self.settings.hyper, self.settings
        step_tokens = sum(e.num_trained for e in examples)
        loss_sum, correct = 0.0, 0
        for group in micro_batches(examples, s.max_batch_tokens):
            if callbacks is not None and callbacks.should_stop():
                self.optimizer.zero_grad(set_to_none=True)
                raise Cancelled
            batch = pack([(e.input_ids, e.labels_mask) for e in group])
            loss, ok = self.model.loss(batch)
            (loss / step_tokens).backward()
            loss_sum += float(loss.detach())
            correct += ok
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        lr = lr_at(self.step, self.total_steps, hp.learning_rate, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.trained_tokens += sum(len(e.input_ids) for e in examples)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "train_loss": loss_sum / step_tokens,
            "train_mean_token_accuracy": correct / step_tokens,
            "learning_rate": lr,
        }

    def run(self, callbacks: Callbacks | None = None) -> TrainResult:
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        torch.manual_seed(s.seed)
        history: list[dict] = []
        examples = self.train_data.examples
        bs = s.hyper.batch_size
        self.model.train()
        last: dict = {}
        while self.epoch < s.hyper.n_epochs:
            order = epoch_order(len(examples), s.seed, self.epoch)
            first = self.step - self.epoch * self.steps_per_epoch
            for k in range(first, self.steps_per_epoch):
                chosen = [examples[i] for i in order[k * bs : (k + 1) * bs]]
                started = time.perf_counter()
                last = self._train_step(chosen, callbacks)
                last["epoch"] = self.epoch + 1
                last["seconds"] = time.perf_counter() - started
                last["trained_tokens"] = self.trained_tokens
                if self.step == self.steps_per_epoch * (self.epoch + 1) and self.validation:
                    self.model.eval()
                    valid = evaluate(self.model, self.validation, s.max_batch_tokens)
                    self.model.train()
                    last["valid_loss"] = valid["loss"]
                    last["valid_mean_token_accuracy"] = valid["mean_token_accuracy"]
                history.append(last)
                if callbacks is not None:
                    callbacks.on_step(dict(last))
            self.epoch += 1
            if callbacks is not None:
                callbacks.on_epoch_end(self.epoch, self.step, self.state(), dict(last))
        self.model.eval()
        return TrainResult(self.step, self.trained_tokens, dict(last), history)


def save_state(state: dict, path: Path) -> None:
    torch.save(state, path)


def load_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)
