"""Sampling as a pure function: logits of one decode step in, one token per row out.

The engine calls it once per step for the rows that emit a token:

    batch = SamplingBatch.build(params, prompt_token_ids, output_token_ids, generators, device)
    bitmask = fill_bitmask(allocate_bitmask(len(params), vocab_size), constraints)  # optional
    out = sample(logits, batch, bitmask)  # logits: float32 [B, V]
    out.token_ids                         # LongTensor [B]

Per row, in this order:
1. penalties: `repetition_penalty` (HF semantics: over prompt + generated tokens, a positive
   logit is divided by it, a negative one multiplied), then `frequency_penalty` (times the
   count of each generated token) and `presence_penalty` (once per generated token) — OpenAI
   semantics, generated tokens only.
2. logprobs, when the row asked for them: log-softmax of the penalised logits — the model's
   distribution as the request shaped it, before temperature, top-k/top-p/min-p and the
   constraint bitmask. So `logprob` is what the model believes, not the truncated sampling
   distribution, as OpenAI reports it.
3. the constraint bitmask (int32 [B, ceil(V / 32)], bit set = allowed; CPU is fine, it is
   moved to the logits' device). A row whose mask allows nothing is left unmasked: its
   constraint has failed and the engine should finish the row.
4. temperature < 1e-5 is greedy (argmax). Otherwise logits / temperature, then top-k
   (0 = off), top-p over what top-k kept, min-p relative to the most likely token; then
   exponential-race sampling `argmax(probs / q)`, q ~ Exp(1) of shape [V].

Seeds: a row with its own `torch.Generator` draws its noise from it alone, so a seeded request
gets the same tokens whatever else shares the batch and wherever its row is. Rows without a
generator share one draw from `SamplingBatch.shared_generator` (None: torch's global RNG).
Create a seeded request's generator once with `new_generator(seed, device)` and keep it across
steps: it advances with every sampled token. For n > 1 choices give choice i `seed + i`, so the
choices differ and each stays reproducible.

Left out: logit bias, bad words, beam search, speculative decoding; ties in top-k keep every
tied token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ownllm.engine.messages import SamplingParams

GREEDY_EPS = 1e-5  # temperatures below this are greedy
MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit


@dataclass
class SampleOutput:
    token_ids: torch.Tensor  # [B] long
    logprobs: torch.Tensor | None = None  # [B] float32: the chosen tokens; None: no row asked
    top_token_ids: torch.Tensor | None = None  # [B, K] long, K = max top-k asked over rows
    top_logprobs: torch.Tensor | None = None  # [B, K] float32; row i uses its first k_i columns


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors; a field is None when no row needs it."""

    num_rows: int
    is_greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    temperature: torch.Tensor | None  # [B, 1], 1.0 on greedy rows
    top_k: torch.Tensor | None  # [B] long, 0 = off
    max_top_k: int  # largest top_k over the rows (0: none)
    top_p: torch.Tensor | None  # [B, 1]
    min_p: torch.Tensor | None  # [B, 1]
    presence_penalty: torch.Tensor | None  # [B, 1]
    frequency_penalty: torch.Tensor | None  # [B, 1]
    repetition_penalty: torch.Tensor | None  # [B, 1]
    output_ids: torch.Tensor | None  # [B, L] long, -1 padded: generated tokens
    seen_ids: torch.Tensor | None  # [B, L'] long, -1 padded: prompt + generated tokens
    generators: list[torch.Generator | None]
    shared_generator: torch.Generator | None
    num_logprobs: list[int | None]
    max_num_logprobs: int | None  # None: no row asked for logprobs

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        prompt_token_ids: Sequence[Sequence[int]],
        output_token_ids: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None] | None = None,
        device: torch.device | str = "cpu",
        shared_generator: torch.Generator | None = None,
    ) -> SamplingBatch:
        """Tensors for one step. Token lists are read only when a row uses a penalty."""
        num_rows = len(params)
        generators = list(generators) if generators is not None else [None] * num_rows
        temps = [p.temperature for p in params]
        greedy = [t < GREEDY_EPS for t in temps]
        all_greedy = all(greedy)

        def column(values: list[float], neutral: float) -> torch.Tensor | None:
            if all(v == neutral for v in values):
                return None
            return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

        def sampling_column(values: list[float], neutral: float) -> torch.Tensor | None:
            # Greedy rows ignore sampling filters.
            if all_greedy:
                return None
            return column([neutral if g else v for v, g in zip(values, greedy)], neutral)

        top_k, max_top_k = None, 0
        if not all_greedy and any(p.top_k > 0 and not g for p, g in zip(params, greedy)):
            ks = [p.top_k if p.top_k > 0 and not g else 0 for p, g in zip(params, greedy)]
            top_k = torch.tensor(ks, dtype=torch.long, device=device)
            max_top_k = max(ks)

        presence = column([p.presence_penalty for p in params], 0.0)
        frequency = column([p.frequency_penalty for p in params], 0.0)
        repetition = column([p.repetition_penalty for p in params], 1.0)
        output_ids = seen_ids = None
        if presence is not None or frequency is not None or repetition is not None:
            output_ids = _pad(output_token_ids, device)
        if repetition is not None:
            seen = [list(p) + list(o) for p, o in zip(prompt_token_ids, output_token_ids)]
            seen_ids = _pad(seen, device)

        num_logprobs = [
            None if p.logprobs is None else min(max(p.logprobs, 0), MAX_LOGPROBS) for p in params
        ]
        asked = [k for k in num_logprobs if k is not None]
        return cls(
            num_rows=num_rows,
            is_greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            all_greedy=all_greedy,
            temperature=sampling_column([t if not g else 1.0 for t, g in zip(temps, greedy)], 1.0),
            top_k=top_k,
            max_top_k=max_top_k,
            top_p=sampling_column([p.top_p for p in params], 1.0),
            min_p=sampling_column([p.min_p for p in params], 0.0),
            presence_penalty=presence,
            frequency_penalty=frequency,
            repetition_penalty=repetition,
            output_ids=output_ids,
            seen_ids=seen_ids,
            generators=generators,
            shared_generator=shared_generator,
            num_logprobs=num_logprobs,
            max_num_logprobs=max(asked) if asked else None,
        )


def new_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one seeded request (keep it for the request's lifetime)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return generator


def sample(
    logits: torch.Tensor, batch: SamplingBatch, bitmask: torch.Tensor | None = None
) -> SampleOutput:
    """One token per row of `logits` (float32 [B, V]; not modified)."""
    logits = _apply_penalties(logits.float(), batch)
    logprobs_all = None
    if batch.max_num_logprobs is not None:
        logprobs_all = torch.log_softmax(logits, dim=-1)  # [B, V]
    if bitmask is not None:
        logits = apply_bitmask(logits, bitmask)

    greedy_ids = logits.argmax(dim=-1)
    if batch.all_greedy:
        token_ids = greedy_ids
    else:
        sampled_ids = _sample_random(logits, batch)
        token_ids = torch.where(batch.is_greedy, greedy_ids, sampled_ids)

    out = SampleOutput(token_ids=token_ids)
    if logprobs_all is not None:
        out.logprobs = logprobs_all.gather(1, token_ids.unsqueeze(1)).squeeze(1)
        if batch.max_num_logprobs:
            top = logprobs_all.topk(batch.max_num_logprobs, dim=-1)
            out.top_logprobs, out.top_token_ids = top.values, top.indices
    return out


def _pad(rows: Sequence[Sequence[int]], device: torch.device | str) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    padded = [list(r) + [-1] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.long, device=device).reshape(len(rows), width)


def _token_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, L] -1-padded token ids -> [B, V] float32 counts."""
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.float32, device=ids.device)
    valid = ids >= 0
    return counts.scatter_add_(1, ids.clamp(min=0), valid.float())


def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    vocab_size = logits.shape[1]
    if batch.repetition_penalty is not None and batch.seen_ids is not None:
        seen = _token_counts(batch.seen_ids, vocab_size) > 0
        penalised = torch.where(
            logits > 0, logits / batch.repetition_penalty, logits * batch.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if batch.output_ids is not None and (
        batch.frequency_penalty is not None or batch.presence_penalty is not None
    ):
        counts = _token_counts(batch.output_ids, vocab_size)
        if batch.frequency_penalty is not None:
            logits = logits - batch.frequency_penalty * counts
        if batch.presence_penalty is not None:
            logits = logits - batch.presence_penalty * (counts > 0).float()
    return logits


def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.temperature is not None:
        logits = logits / batch.temperature
    logits = _apply_top_k_top_p(logits, batch.top_k, batch.max_top_k, batch.top_p)
    probs = logits.softmax(dim=-1)
    if batch.min_p is not None:
        threshold = batch.min_p * probs.amax(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < threshold, 0.0)
    return (probs / _exponential_noise(probs, batch)).argmax(dim=-1)


def _exponential_noise(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """q ~ Exp(1) [B, V]: seeded rows from their own generator, the rest from one draw."""
    seeded = [i for i, g in enumerate(batch.generators) if g is not None]
    noise = torch.empty_like(probs)
    if not seeded:
        noise.exponential_(generator=batch.shared_generator)
    else:
        unseeded = [i for i, g in enumerate(batch.generators) if g is None]
        if unseeded:
            shared = torch.empty(len(unseeded), probs.shape[1], device=probs.device)
            noise[unseeded] = shared.exponential_(generator=batch.shared_generator)
        for i in seeded:
            noise[i].exponential_(generator=batch.generators[i])
    # Exp(1) draws of exactly 0 would turn a masked (0-probability) token into 0/0 = nan.
    return noise.clamp_(min=torch.finfo(noise.dtype).tiny)


def _apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int, top_p: torch.Tensor | None
) -> torch.Tensor:
    if top_k is None and top_p is None:
        return logits
    vocab_size = logits.shape[1]
    if top_p is None:  # top-k alone: a partial top-k instead of a full sort
        assert top_k is not None
        max_k = min(max_top_k, vocab_size)
        k = top_k.clamp(min=1, max=max_k)
        kth = logits.topk(max_k, dim=-1).values.gather(1, (k - 1).unsqueeze(1))
        kth = kth.masked_fill((top_k <= 0).unsqueeze(1), float("-inf"))
        return logits.masked_fill(logits < kth, float("-inf"))

    sorted_logits, sorted_idx = logits.sort(dim=-1)  # ascending
    if top_k is not None:
        k = torch.where(top_k > 0, top_k.clamp(max=vocab_size), vocab_size)
        kth = sorted_logits.gather(1, (vocab_size - k).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - top_p
    drop[:, -1] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)


# --- constraint bitmasks ---------------------------------------------------------------


def allocate_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed int32 bitmask [batch_size, ceil(vocab_size / 32)] on the CPU."""
    return torch.full((batch_size, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def fill_bitmask(bitmask: torch.Tensor, constraints: Sequence[Any | None]) -> torch.Tensor:
    """Fill row i from `constraints[i]` (a TokenConstraint); rows without one allow all."""
    for row, constraint in enumerate(constraints):
        if constraint is None:
            bitmask[row].fill_(-1)
        else:
            constraint.fill_bitmask(bitmask, row)
    return bitmask


def bitmask_to_allowed(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [B, W] bitmask -> bool [B, vocab_size]; tokens past 32 * W are not allowed."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [B, W, 32]
    allowed = bits.reshape(bitmask.shape[0], -1).bool()
    if allowed.shape[1] >= vocab_size:
        return allowed[:, :vocab_size]
    pad = allowed.new_zeros(bitmask.shape[0], vocab_size - allowed.shape[1])
    return torch.cat([allowed, pad], dim=1)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Logits with disallowed tokens at -inf (out of place). Rows allowing nothing stay as
    they are rather than become all -inf."""
    allowed = bitmask_to_allowed(bitmask.to(logits.device, non_blocking=True), logits.shape[1])
    allowed |= ~allowed.any(dim=-1, keepdim=True)
    return logits.masked_fill(~allowed, float("-inf"))
