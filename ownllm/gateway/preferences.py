"""Preference pairs (DPO JSONL) from stored completions and their feedback.

Two kinds of evidence make a pair, in OpenAI's preference format (`input`,
`preferred_output`, `non_preferred_output`, see `ownllm.tuning.preferences`):

- a correction: the corrected answer is preferred over the model's own;
- ratings: of two rated answers to the same prompt (the same messages), the
  higher-rated one is preferred. The best-rated answer of a prompt is paired
  with each lower-rated one; equal ratings say nothing and make no pair.

Everything comes from the stored rows, which the capture stage redacted
(PII and secrets, in prompts, answers and corrections alike), so nothing
redacted comes back. Identical pairs are written once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ownllm.gateway.capture import digest, export_rows, stored_answer, text_turns
from ownllm.store.db import Database
from ownllm.store.schema import StoredCompletion


@dataclass
class PreferenceStats:
    num_rows: int = 0
    num_exported: int = 0
    num_corrected: int = 0  # pairs from a correction
    num_rated: int = 0  # pairs from two ratings
    num_duplicates: int = 0


def _prompt(row: StoredCompletion) -> list[dict[str, str]] | None:
    """The conversation up to the answer, when it ends with the user's turn."""
    messages = text_turns(row)
    return messages if messages and messages[-1]["role"] == "user" else None


def preference_pair(messages: list[dict], preferred: str, non_preferred: str) -> dict[str, Any]:
    return {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def export_preferences(
    db: Database,
    *,
    tenant_id: str | None = None,
    since: int | None = None,
    model: str | None = None,
) -> tuple[list[dict[str, Any]], PreferenceStats]:
    """DPO pairs from stored completions, oldest evidence first, without duplicates."""
    stats = PreferenceStats()
    candidates: list[tuple[str, dict[str, Any]]] = []
    rated: dict[str, list[tuple[int, str, list[dict]]]] = {}  # prompt -> (rating, answer, …)
    for row in export_rows(db, tenant_id=tenant_id, since=since, model=model):
        stats.num_rows += 1
        messages, answer = _prompt(row), stored_answer(row)
        if messages is None:
            continue
        correction = (row.correction or "").strip()
        if correction and answer and correction != answer.strip():
            candidates.append(("corrected", preference_pair(messages, row.correction, answer)))
        if row.rating is not None and answer and not correction:
            key = json.dumps([row.tenant_id, messages], sort_keys=True)
            rated.setdefault(key, []).append((row.rating, answer, messages))
    for answers in rated.values():
        best_rating, best, messages = max(answers, key=lambda a: a[0])  # the first of the best
        for rating, answer, _ in answers:
            if rating < best_rating and answer.strip() != best.strip():
                candidates.append(("rated", preference_pair(messages, best, answer)))
    seen: set[str] = set()
    pairs = []
    for kind, candidate in candidates:
        fingerprint = digest(candidate)
        if fingerprint in seen:
            stats.num_duplicates += 1
            continue
        seen.add(fingerprint)
        if kind == "corrected":
            stats.num_corrected += 1
        else:
            stats.num_rated += 1
        pairs.append(candidate)
    stats.num_exported = len(pairs)
    return pairs, stats
