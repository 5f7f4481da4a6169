"""The LoRA training loop: epochs of shuffled steps, normalised accumulation, checkpoints.

One optimizer step takes `batch_size` examples (chat examples, or preference
pairs for DPO: the `objective`, see `ownllm.tuning.objectives`). Under data
parallelism (`ownllm.tuning.parallel`) each rank takes every world_size-th
example of the step. A rank packs its share into micro-batches of at most
`max_batch_tokens` rows (padding-free, see `ownllm.tuning.model`); each
micro-batch's summed loss is divided by the weight of the whole step (its
trained tokens, or its pairs) before backward, and the ranks' gradients are
summed, so the gradient is the step's mean however the step was split or
sharded: N ranks give one rank's adapter to float rounding. AdamW on the
LoRA parameters only, linear warm-up then linear decay, gradient clipping at
1.0. The example order of epoch e comes from `seed` and e alone, so a run
resumed from an epoch checkpoint continues exactly as it would have.

The loop talks to the outside through `Callbacks` (metrics, checkpoints, a
cancel check between micro-batches; with several ranks, one agreed check per
step); it knows nothing of jobs or databases.

Left out: mixed-length curriculum, early stopping.
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
from ownllm.tuning.model import TrainableModel
from ownllm.tuning.objectives import Supervised
from ownllm.tuning.parallel import Single


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


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up then linear decay."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


@torch.no_grad()
def evaluate(model: TrainableModel, data, max_tokens: int, objective=None, parallel=None) -> dict:
    """The objective's metrics over all of `data` (each rank a share), keys without prefix."""
    objective, parallel = objective or Supervised(), parallel or Single()
    sums = [0.0] * len(objective.stats)
    for group in objective.groups(parallel.shard(data.examples), max_tokens):
        _, stats = objective.loss(model, group)
        sums = [a + b for a, b in zip(sums, stats)]
    sums = parallel.sum(sums)
    weight = max(1.0, objective.weight(data.examples))
    return {k[1:]: v for k, v in objective.metrics(sums, weight, "").items()}


class Trainer:
    def __init__(
        self,
        model: TrainableModel,
        train: Dataset,
        settings: TrainSettings,
        validation: Dataset | None = None,
        objective=None,
        parallel=None,
    ) -> None:
        """`objective` defaults to `Supervised`; a `Dpo` one computes its reference here,
        from the model as given (so before `load_state`)."""
        self.model, self.train_data, self.validation, self.settings = (
            model,
            train,
            validation,
            settings,
        )
        self.objective = objective or Supervised()
        self.parallel = parallel or Single()
        self.objective.prepare(model, [train, validation], self.parallel, settings.max_batch_tokens)
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

    def _should_stop(self, callbacks: Callbacks | None) -> bool:
        return callbacks is not None and callbacks.should_stop()

    def _train_step(self, examples: list[TokenizedExample], callbacks: Callbacks | None) -> dict:
        hp, s, objective, parallel = (
            self.settings.hyper,
            self.settings,
            self.objective,
            self.parallel,
        )
        weight = objective.weight(examples)
        sums = [0.0] * len(objective.stats)
        # several ranks agree on stopping once per step; one process checks between micro-batches
        if parallel.world_size > 1 and parallel.any(self._should_stop(callbacks)):
            raise Cancelled
        for group in objective.groups(parallel.shard(examples), s.max_batch_tokens):
            if parallel.world_size == 1 and self._should_stop(callbacks):
                self.optimizer.zero_grad(set_to_none=True)
                raise Cancelled
            loss, stats = objective.loss(self.model, group)
            (loss / weight).backward()
            sums = [a + b for a, b in zip(sums, stats)]
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        parallel.all_reduce_grads(params)
        sums = parallel.sum(sums)
        torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        lr = lr_at(self.step, self.total_steps, hp.learning_rate, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.trained_tokens += sum(objective.num_tokens(e) for e in examples)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            **objective.metrics(sums, weight, "train"),
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
                    valid = evaluate(
                        self.model,
                        self.validation,
                        s.max_batch_tokens,
                        self.objective,
                        self.parallel,
                    )
                    self.model.train()
                    last.update({f"valid_{k}": v for k, v in valid.items()})
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
