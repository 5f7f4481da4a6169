"""Per-request output state: sampling rows, detokenisation, stop conditions, deltas.

A `RequestState` holds what the engine keeps for one request across steps:
its choices (sequences), and per choice a seeded generator (seed + index),
a constraint, an incremental detokenizer and a stop-string checker. The
engine feeds it each sampled token and gets back the `Delta` to stream.
"""

from __future__ import annotations

from typing import Any

import torch

from ownllm.engine.detokenizer import IncrementalDetokenizer, StopChecker, TokenTexts
from ownllm.engine.messages import Delta, GenerateRequest
from ownllm.engine.sampler import (
    SamplingBatch,
    allocate_bitmask,
    fill_bitmask,
    new_generator,
    sample,
)
from ownllm.engine.sequence import Sequence


class RequestState:
    def __init__(
        self,
        request: GenerateRequest,
        first: Sequence,
        tokenizer: Any,
        token_texts: TokenTexts | None,
        device: torch.device,
    ) -> None:
        self.request = request
        self.tokenizer = tokenizer
        self.token_texts = token_texts
        self.device = device
        self.eos_token_ids = set(getattr(tokenizer, "eos_token_ids", ()) or ())
        self.seqs: list[Sequence] = []
        self.generators: list[torch.Generator | None] = []
        self.constraints: list[Any] = []
        self.detokenizers: list[IncrementalDetokenizer] = []
        self.stop_checkers: list[StopChecker] = []
        self.add_choice(first)

    def add_choice(self, seq: Sequence) -> None:
        sp = self.request.sampling
        seq.index = len(self.seqs)
        self.seqs.append(seq)
        seed = None if sp.seed is None else sp.seed + seq.index
        self.generators.append(None if seed is None else new_generator(seed, self.device))
        constraint = self.request.constraint
        self.constraints.append(
            None if constraint is None else constraint if seq.index == 0 else constraint.fork()
        )
        self.detokenizers.append(
            IncrementalDetokenizer(self.tokenizer, self.request.prompt_token_ids)
        )
        self.stop_checkers.append(StopChecker(sp.stop))

    def unfinished(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.is_finished]

    @staticmethod
    def sample(
        logits: torch.Tensor,  # [B, V] float32, row i for seqs[i]
        seqs: list[Sequence],
        states: list[RequestState],
        device: torch.device,
    ) -> list[tuple[int, tuple | None]]:
        """(token id, (logprob, top alternatives) or None) for each row."""
        params = [st.request.sampling for st in states]
        uses_penalty = any(
            p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0 for p in params
        )
        prompts = [s.token_ids[: s.num_prompt_tokens] if uses_penalty else () for s in seqs]
        outputs = [s.output_token_ids if uses_penalty else () for s in seqs]
        generators = [st.generators[s.index] for s, st in zip(seqs, states)]
        batch = SamplingBatch.build(params, prompts, outputs, generators, device)
        constraints = [st.constraints[s.index] for s, st in zip(seqs, states)]
        bitmask = None
        if any(c is not None for c in constraints):
            bitmask = fill_bitmask(allocate_bitmask(len(seqs), logits.shape[1]), constraints)
        out = sample(logits, batch, bitmask)
        token_ids = out.token_ids.tolist()
        results: list[tuple[int, tuple | None]] = []
        logprobs = out.logprobs.tolist() if out.logprobs is not None else None
        top_ids = out.top_token_ids.tolist() if out.top_token_ids is not None else None
        top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        for i, p in enumerate(params):
            if p.logprobs is None or logprobs is None:
                results.append((token_ids[i], None))
                continue
            k = batch.num_logprobs[i] or 0
            top = list(zip(top_ids[i][:k], top_lps[i][:k])) if top_ids and k else []
            results.append((token_ids[i], (logprobs[i], top)))
        return results

    def on_token(self, seq: Sequence, token_id: int, logprob: tuple | None) -> Delta:
        """Record the token `seq` just sampled (already appended) and say what to stream."""
        sp = self.request.sampling
        i = seq.index
        constraint = self.constraints[i]
        if constraint is not None:
            constraint.accept_token(token_id)
        finish = None
        text = ""
        stop_checker = self.stop_checkers[i]
        if (token_id in self.eos_token_ids and not sp.ignore_eos) or token_id in sp.stop_token_ids:
            finish = "stop"
        else:
            text, hit = stop_checker.feed(self.detokenizers[i].add(token_id))
            if hit:
                finish = "stop"
        if finish is None and constraint is not None and constraint.is_terminated():
            finish = "stop"
        if finish is None and seq.num_output_tokens >= seq.max_tokens:
            finish = "length"
        if finish is not None and not stop_checker.is_stopped:
            tail, hit = stop_checker.feed(self.detokenizers[i].flush())
            text += tail + stop_checker.flush()
            if hit:
                finish = "stop"
        logprobs = None
        if logprob is not None and self.token_texts is not None:
            value, top = logprob
            logprobs = [self.token_texts.logprob(token_id, value, top)]
        return Delta(
            index=i,
            text=text,
            token_ids=[token_id],
            logprobs=logprobs,
            finish_reason=finish,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            num_output_tokens=seq.num_output_tokens,
        )

    def final_delta(self, seq: Sequence, reason: str) -> Delta:
        return Delta(
            index=seq.index,
            text="",
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            num_output_tokens=seq.num_output_tokens,
        )
