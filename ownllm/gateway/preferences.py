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

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ownllm.gateway.capture import request_messages
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
    messages = [
        {"role": m["role"], "content": m["content"]}
        for m in request_messages(row)
        if m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
    ]
    return messages if messages and messages[-1]["role"] == "user" else None


def _answer(row: StoredCompletion) -> str | None:
    choices = row.response.get("choices") or []
    content = (choices[0].get("message") or {}).get("content") if choices else None
    return content if isinstance(content, str) and content.strip() else None


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
    q = select(StoredCompletion).order_by(StoredCompletion.stored_at, StoredCompletion.id)
    if tenant_id:
        q = q.where(StoredCompletion.tenant_id == tenant_id)
    if since is not None:
        q = q.where(StoredCompletion.created_at >= since)
    if model:
        q = q.where(StoredCompletion.model == model)
    stats = PreferenceStats()
    candidates: list[tuple[str, dict[str, Any]]] = []
    rated: dict[str, list[tuple[int, str, list[dict]]]] = {}  # prompt -> (rating, answer, …)
    with db.session() as session:
        for row in session.execute(q).scalars():
            stats.num_rows += 1
            messages, answer = _prompt(row), _answer(row)
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
        digest = hashlib.sha256(json.dumps(candidate, sort_keys=True).encode()).hexdigest()
        if digest in seen:
            stats.num_duplicates += 1
            continue
        seen.add(digest)
        if kind == "corrected":
            stats.num_corrected += 1
        else:
            stats.num_rated += 1
        pairs.append(candidate)
    stats.num_exported = len(pairs)
    return pairs, stats
