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
2. `logit_bias` (OpenAI semantics): a sparse per-row bias, (token id, value in [-100, 100])
   pairs, added to the logits; -100 bans the token. Only rows that carry a bias are touched.
   A ban yields to the constraint: when a row's constraint allows only banned tokens, the
   ban is lifted for that step (the grammar must go on), and a row banning every token is
   left unbanned.
3. logprobs, when the row asked for them: log-softmax of the penalised and biased logits —
   the model's distribution as the request shaped it, before temperature,
   top-k/top-p/min-p and the constraint bitmask. So `logprob` is what the model believes,
   not the truncated sampling distribution, as OpenAI reports it.
4. the constraint bitmask (int32 [B, ceil(V / 32)], bit set = allowed; CPU is fine, it is
   moved to the logits' device). A row whose mask allows nothing is left unmasked: its
   constraint has failed and the engine should finish the row.
5. temperature < 1e-5 is greedy (argmax). Otherwise logits / temperature, then top-k
   (0 = off), top-p over what top-k kept, min-p relative to the most likely token; then
   exponential-race sampling `argmax(probs / q)`, q ~ Exp(1) of shape [V].

Seeds: a row with its own `torch.Generator` draws its noise from it alone, so a seeded request
gets the same tokens whatever else shares the batch and wherever its row is. Rows without a
generator share one draw from `SamplingBatch.shared_generator` (None: torch's global RNG).
Create a seeded request's generator once with `new_generator(seed, device)` and keep it across
steps: it advances with every sampled token. For n > 1 choices give choice i `seed + i`, so the
choices differ and each stays reproducible.

Left out: bad words, beam search, speculative decoding; ties in top-k keep every
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
BAN_BIAS = -100.0  # a logit_bias this low bans the token (OpenAI: -100 "should" ban)


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
    # logit_bias, sparse (COO): bias_values[j] is added at (bias_rows[j], bias_ids[j]);
    # None when no row has a finite bias. ban_rows/ban_ids: the banned (row, token) pairs.
    bias_rows: torch.Tensor | None = None  # [N] long
    bias_ids: torch.Tensor | None = None  # [N] long
    bias_values: torch.Tensor | None = None  # [N] float32
    ban_rows: torch.Tensor | None = None  # [M] long
    ban_ids: torch.Tensor | None = None  # [M] long

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
        bias = _sparse_bias(params, device)
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
            **bias,
        )


def _sparse_bias(
    params: Sequence[SamplingParams], device: torch.device | str
) -> dict[str, torch.Tensor]:
    """The rows' logit_bias as COO tensors (bias_* and ban_* fields; empty when no row has one)."""
    if not any(p.logit_bias for p in params):
        return {}
    add: list[tuple[int, int, float]] = []
    ban: list[tuple[int, int]] = []
    for row, p in enumerate(params):
        for token_id, value in p.logit_bias:
            if value <= BAN_BIAS:
                ban.append((row, token_id))
            elif value:
                add.append((row, token_id, value))
    out: dict[str, torch.Tensor] = {}
    if add:
        out["bias_rows"] = torch.tensor([r for r, _, _ in add], dtype=torch.long, device=device)
        out["bias_ids"] = torch.tensor([t for _, t, _ in add], dtype=torch.long, device=device)
        out["bias_values"] = torch.tensor(
            [v for _, _, v in add], dtype=torch.float32, device=device
        )
    if ban:
        out["ban_rows"] = torch.tensor([r for r, _ in ban], dtype=torch.long, device=device)
        out["ban_ids"] = torch.tensor([t for _, t in ban], dtype=torch.long, device=device)
    return out


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
    # bool [B, V]: the constraint's tokens; None: every token
    allowed = None if bitmask is None else allowed_tokens(bitmask, logits.shape[1], logits.device)
    logits = _apply_logit_bias(logits, batch, allowed)
    logprobs_all = None
    if batch.max_num_logprobs is not None:
        logprobs_all = torch.log_softmax(logits, dim=-1)  # [B, V]
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))

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


def _apply_logit_bias(
    logits: torch.Tensor, batch: SamplingBatch, allowed: torch.Tensor | None
) -> torch.Tensor:
    """Logits plus the rows' biases, banned tokens at -inf (out of place when any row has a
    bias; ids past the vocabulary are ignored). A ban that would leave a row nothing the
    constraint (`allowed`, bool [B, V]) allows, or nothing at all, is lifted for that row."""
    vocab_size = logits.shape[1]
    if batch.bias_values is not None:
        assert batch.bias_rows is not None and batch.bias_ids is not None
        inside = batch.bias_ids < vocab_size
        logits = logits.index_put(
            (batch.bias_rows[inside], batch.bias_ids[inside]),
            batch.bias_values[inside],
            accumulate=True,
        )
    if batch.ban_ids is not None:
        assert batch.ban_rows is not None
        inside = batch.ban_ids < vocab_size
        banned = torch.zeros_like(logits, dtype=torch.bool)
        banned[batch.ban_rows[inside], batch.ban_ids[inside]] = True
        left = ~banned if allowed is None else allowed & ~banned
        banned &= left.any(dim=-1, keepdim=True)  # nothing left: the ban yields
        logits = logits.masked_fill(banned, float("-inf"))
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
    allowed = allowed_tokens(bitmask, logits.shape[1], logits.device)
    return logits.masked_fill(~allowed, float("-inf"))


def allowed_tokens(
    bitmask: torch.Tensor, vocab_size: int, device: torch.device | str
) -> torch.Tensor:
    """bool [B, vocab_size] on `device`: the tokens `bitmask` allows; every token on a row
    whose mask allows nothing (its constraint has failed)."""
    allowed = bitmask_to_allowed(bitmask.to(device, non_blocking=True), vocab_size)
    return allowed | ~allowed.any(dim=-1, keepdim=True)
