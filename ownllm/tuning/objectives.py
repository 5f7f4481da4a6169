"""What one optimizer step minimises: the supervised token loss, or the DPO preference loss.

An objective splits a step's examples into micro-batches, gives each one's
summed loss (the trainer divides by the step's `weight` before backward, so the
gradient is the step's mean however it was split or sharded) and sums of its
statistics, and turns summed statistics into the metrics users see.

`Supervised`: cross-entropy over trained tokens, weight = trained tokens.

`Dpo` (Rafailov et al. 2023): for a pair (preferred y+, non-preferred y-),
    reward(y) = beta · (log pi(y | x) - log ref(y | x))
    loss      = -log sigmoid(reward(y+) - reward(y-))
with weight = number of pairs. The reference is the model training starts
from: the base with the adapter disabled for a new adapter (its B = 0, so the
two are the same model), or the parent adapter when preference-tuning an
`ft:` model. Its log-probabilities are computed once, before the first step,
without gradients, so no second copy of the weights is ever loaded. Metrics:
loss, reward margin (mean reward(y+) - reward(y-)) and reward accuracy (the
share of pairs whose preferred answer has the higher reward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ownllm.tuning.model import TrainableModel, pack
from ownllm.tuning.parallel import Single
from ownllm.tuning.preferences import TokenizedPair


def micro_batches(examples: list, max_tokens: int, size=lambda e: len(e.input_ids)) -> list[list]:
    """Greedy packing in order: each micro-batch holds at most `max_tokens` rows (or one example)."""
    out, current, total = [], [], 0
    for example in examples:
        n = size(example)
        if current and total + n > max_tokens:
            out.append(current)
            current, total = [], 0
        current.append(example)
        total += n
    if current:
        out.append(current)
    return out


class Supervised:
    """Next-token cross-entropy on the trained (assistant) tokens."""

    stats = ("loss", "correct")

    def groups(self, examples: list, max_tokens: int) -> list[list]:
        return micro_batches(examples, max_tokens)

    def weight(self, examples: list) -> float:
        return float(sum(e.num_trained for e in examples))

    def num_tokens(self, example) -> int:
        return len(example.input_ids)

    def prepare(self, model: TrainableModel, datasets: list, parallel, max_tokens: int) -> None:
        pass

    def loss(self, model: TrainableModel, group: list) -> tuple[torch.Tensor, list[float]]:
        batch = pack([(e.input_ids, e.labels_mask) for e in group])
        loss, correct = model.loss(batch)
        return loss, [float(loss.detach()), float(correct)]

    def metrics(self, sums: list[float], weight: float, prefix: str) -> dict:
        loss, correct = sums
        return {f"{prefix}_loss": loss / weight, f"{prefix}_mean_token_accuracy": correct / weight}


def sequence_logps(model: TrainableModel, group: list) -> torch.Tensor:
    """Summed log-probabilities of each pair's two answers: [pairs, 2] (preferred, non)."""
    sequences = []
    for pair in group:
        for answer in (pair.preferred, pair.non_preferred):
            sequences.append((answer.input_ids, answer.labels_mask))
    batch = pack(sequences)
    token_logps = -F.cross_entropy(model.logits(batch), batch.targets, reduction="none")  # [N]
    ends = torch.tensor(batch.cu_seqlens[1:])
    owner = torch.bucketize(batch.pred_rows, ends, right=True)  # [N] sequence of each row
    out = torch.zeros(len(sequences), dtype=token_logps.dtype).index_add(0, owner, token_logps)
    return out.view(-1, 2)


class Dpo:
    """Direct preference optimisation against the model as training found it."""

    stats = ("loss", "margin", "correct")

    def __init__(self, beta: float, reference_is_base: bool = True) -> None:
        self.beta, self.reference_is_base = beta, reference_is_base
        self.reference: dict[int, torch.Tensor] = {}  # id(pair) -> [2] reference log-probs

    def groups(self, pairs: list, max_tokens: int) -> list[list]:
        return micro_batches(pairs, max_tokens, size=lambda p: p.num_tokens)

    def weight(self, pairs: list) -> float:
        return float(len(pairs))

    def num_tokens(self, pair: TokenizedPair) -> int:
        return pair.num_tokens

    @torch.no_grad()
    def prepare(
        self, model: TrainableModel, datasets: list, parallel=None, max_tokens: int = 2048
    ) -> None:
        """Reference log-probs of every pair, each rank computing a share (summed after)."""
        parallel = parallel or Single()
        pairs = [p for data in datasets if data is not None for p in data.pairs]
        table = torch.zeros(len(pairs), 2, dtype=torch.float64)
        mine = list(range(len(pairs)))[parallel.rank :: parallel.world_size]
        was_training = model.training
        model.eval()
        with model.adapters_disabled(self.reference_is_base):
            for chunk in micro_batches(mine, max_tokens, size=lambda i: pairs[i].num_tokens):
                table[chunk] = sequence_logps(model, [pairs[i] for i in chunk]).double()
        model.train(was_training)
        table = torch.tensor(parallel.sum(table.view(-1).tolist()), dtype=torch.float64)
        for pair, row in zip(pairs, table.view(-1, 2)):
            self.reference[id(pair)] = row.float()

    def loss(self, model: TrainableModel, group: list) -> tuple[torch.Tensor, list[float]]:
        logps = sequence_logps(model, group)  # [P, 2]
        reference = torch.stack([self.reference[id(p)] for p in group])  # [P, 2]
        rewards = self.beta * (logps - reference)
        margin = rewards[:, 0] - rewards[:, 1]
        loss = -F.logsigmoid(margin).sum()
        margin = margin.detach()
        return loss, [float(loss.detach()), float(margin.sum()), float((margin > 0).sum())]

    def metrics(self, sums: list[float], weight: float, prefix: str) -> dict:
        loss, margin, correct = sums
        return {
            f"{prefix}_loss": loss / weight,
            f"{prefix}_reward_margin": margin / weight,
            f"{prefix}_reward_accuracy": correct / weight,
        }
