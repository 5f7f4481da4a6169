"""A Sequence: one choice of one request, as the scheduler and block manager see it.

A request with n > 1 choices owns n sequences; they share the prompt's KV
blocks (see `BlockManager.fork`). A sequence's tokens are its prompt followed
by what it has generated; `num_computed_tokens` says how many of them already
have KV in the cache, so "prefill" and "decode" are the same thing: compute
the tokens that are not computed yet. No torch here.
"""

from __future__ import annotations

import itertools
from enum import Enum, auto

_seq_counter = itertools.count()


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """Token ids, progress and KV-block table of one generated choice."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        *,
        index: int = 0,
        adapter_key: tuple = (),
        cache_key: bytes = b"",
        max_tokens: int = 16,
        priority: int = 0,
        num_forks: int = 0,
    ) -> None:
        self.seq_id = next(_seq_counter)
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        # (adapter_id, weight) pairs; () is the base model
        self.adapter_key = adapter_key
        # seeds the prefix-hash chain: tenant scope + adapter set
        self.cache_key = cache_key
        self.max_tokens = max_tokens
        self.priority = priority
        self.num_forks = num_forks  # choices still to fork from this one after prefill
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # hashes of this sequence's full blocks, in order
        self.lora_slot = -1  # -1: base model
        self.finish_reason: str | None = None

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id}#{self.index}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, {self.status.name})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.seq_id)
