"""Stored completions: capture, read, feedback, and the fine-tuning dataset built from them.

A chat completion is stored when the request says `store: true`, or, when it
says nothing, when its key, its tenant or `capture.default_store` says so.
What is stored passes the policy's `capture` stage first (the shipped policy
redacts PII and secrets there), and so does a corrected answer given as
feedback: no original PII reaches the table.

Feedback is an ownllm extension: a rating from 1 to 5 and optionally a
corrected answer. `export_dataset` turns stored completions into chat
fine-tuning examples (`{"messages": [...]}`): the corrected answer replaces
the model's; answers rated 1-2 without a correction, and unrated answers that
were cut off (length, content_filter), are left out; duplicates are dropped.

Retention and tenant purge live in `ownllm.gateway.purge`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select

from ownllm.config import CaptureConfig
from ownllm.errors import InvalidRequestError
from ownllm.gateway.guard.checks import Guard, events_for, record_events
from ownllm.gateway.hooks import InferenceCall, InferenceHook, InferenceOutcome
from ownllm.gateway.principal import Principal
from ownllm.store.db import Database
from ownllm.store.schema import ApiKey, StoredCompletion, Tenant
from ownllm.store.tenancy import get_visible, visible_rows

RATING_MIN, RATING_MAX = 1, 5
BAD_RATING = 2  # at or below: not a training target unless corrected
_PARAMS = ("temperature", "top_p", "max_tokens", "seed", "stop", "n", "presence_penalty",
           "frequency_penalty")  # fmt: skip


def should_store(db: Database, principal: Principal, requested: bool | None,
                 config: CaptureConfig) -> bool:  # fmt: skip
    """The request's `store` wins; then the key's default, the tenant's, the server's."""
    if requested is not None:
        return requested
    if principal.is_from_key_row:  # auth resolved the key's and tenant's defaults
        default = principal.capture_default
        return default if default is not None else config.default_store
    with db.session() as session:
        if principal.key_id:
            key = session.get(ApiKey, principal.key_id)
            if key is not None and key.capture_default is not None:
                return key.capture_default
        tenant = session.get(Tenant, principal.tenant_id)
        if tenant is not None and tenant.capture_default:
            return True
    return config.default_store


def store_completion(
    db: Database,
    guard: Guard,
    *,
    principal: Principal,
    completion: dict[str, Any],
    messages: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> StoredCompletion | None:
    """Redact (capture stage) and store one chat completion; None when a capture rule blocks.

    `completion` is the chat.completion object as the client received it."""
    tenant_id = principal.tenant_id
    request_id = completion["id"]
    stored_messages, decision = guard.check_messages(tenant_id, "capture", messages)
    response = json.loads(json.dumps(completion))
    for choice in response.get("choices", []):
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            message["content"], _ = guard.check_text(
                tenant_id, "capture", message["content"], decision
            )
    record_events(db, events_for(tenant_id, request_id, decision))
    if decision.is_blocked:
        return None
    params = {k: v for k, v in (params or {}).items() if k in _PARAMS and v is not None}
    row = StoredCompletion(
        id=request_id,
        tenant_id=tenant_id,
        key_id=principal.key_id,
        model=str(completion.get("model", "")),
        created_at=int(completion.get("created") or time.time()),
        stored_at=time.time(),
        request={"messages": stored_messages, **params},
        response=response,
        metadata_=dict(metadata or {}),
    )
    with db.session() as session:
        session.merge(row)
    return row


# --- reading ----------------------------------------------------------------------------------


def get_completion(db: Database, principal: Principal, completion_id: str) -> StoredCompletion:
    message = f"No stored chat completion found with id '{completion_id}'."
    return get_visible(db, StoredCompletion, completion_id, principal, message, "completion_id")


def list_completions(
    db: Database,
    principal: Principal,
    *,
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    after: str | None = None,
    limit: int = 20,
    order: str = "asc",
) -> tuple[list[StoredCompletion], bool]:
    """One page of stored completions (oldest first for `asc`) and whether more follow."""
    q = visible_rows(select(StoredCompletion), StoredCompletion, principal)
    if model:
        q = q.where(StoredCompletion.model == model)
    for key, value in (metadata or {}).items():
        q = q.where(StoredCompletion.metadata_[key].as_string() == value)
    stored, ident = StoredCompletion.stored_at, StoredCompletion.id
    if after:
        cursor = get_completion(db, principal, after)
        if order == "asc":
            q = q.where(
                or_(stored > cursor.stored_at, and_(stored == cursor.stored_at, ident > cursor.id))
            )
        else:
            q = q.where(
                or_(stored < cursor.stored_at, and_(stored == cursor.stored_at, ident < cursor.id))
            )
    q = q.order_by(*((stored, ident) if order == "asc" else (stored.desc(), ident.desc())))
    with db.session() as session:
        rows = list(session.execute(q.limit(limit + 1)).scalars())
    return rows[:limit], len(rows) > limit


def completion_object(row: StoredCompletion) -> dict[str, Any]:
    """The stored chat.completion as OpenAI returns it, plus metadata and ownllm feedback.

    Messages carry `refusal: null` even where stored without it: the spec requires it."""
    choices = [
        {**choice, "message": {"refusal": None, **(choice.get("message") or {})}}
        for choice in row.response.get("choices") or []
    ]
    return {
        **row.response,
        "choices": choices,
        "metadata": row.metadata_ or {},
        "request_id": row.id,
        "feedback": {"rating": row.rating, "correction": row.correction},
    }


def request_messages(row: StoredCompletion) -> list[dict[str, Any]]:
    return list((row.request or {}).get("messages") or [])


def text_turns(row: StoredCompletion) -> list[dict[str, str]]:
    """The request's system, user and assistant turns that hold text, as role and content."""
    return [
        {"role": m["role"], "content": m["content"]}
        for m in request_messages(row)
        if m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
    ]


def stored_answer(row: StoredCompletion) -> str | None:
    """The first choice's answer, or None when there is none or it is blank."""
    choices = row.response.get("choices") or []
    content = (choices[0].get("message") or {}).get("content") if choices else None
    return content if isinstance(content, str) and content.strip() else None


def delete_completion(db: Database, principal: Principal, completion_id: str) -> None:
    row = get_completion(db, principal, completion_id)
    with db.session() as session:
        session.execute(StoredCompletion.__table__.delete().where(StoredCompletion.id == row.id))


def update_metadata(db: Database, principal: Principal, completion_id: str,
                    metadata: dict[str, str]) -> StoredCompletion:  # fmt: skip
    row = get_completion(db, principal, completion_id)
    with db.session() as session:
        row = session.get(StoredCompletion, row.id)
        row.metadata_ = dict(metadata)
    return row


def set_feedback(db: Database, guard: Guard, principal: Principal, completion_id: str, *,
                 rating: int | None, correction: str | None) -> StoredCompletion:  # fmt: skip
    """Rate a stored completion and/or give the answer it should have been (redacted
    at the capture stage like everything stored)."""
    if rating is None and correction is None:
        raise InvalidRequestError("Give a `rating`, a `correction`, or both.", param="rating")
    if rating is not None and not RATING_MIN <= rating <= RATING_MAX:
        raise InvalidRequestError(f"`rating` must be an integer from {RATING_MIN} to {RATING_MAX}.",
                                  param="rating")  # fmt: skip
    row = get_completion(db, principal, completion_id)
    if correction is not None:
        if not correction.strip():
            raise InvalidRequestError("`correction` must not be empty.", param="correction")
        correction, decision = guard.check_text(row.tenant_id, "capture", correction)
        record_events(db, events_for(row.tenant_id, row.id, decision))
        if decision.is_blocked:
            raise InvalidRequestError(
                f"The correction was rejected by the content policy (rule '{decision.blocked_by.id}').",
                param="correction",
            )
    with db.session() as session:
        row = session.get(StoredCompletion, row.id)
        if rating is not None:
            row.rating = rating
        if correction is not None:
            row.correction = correction
    return row


# --- dataset export ---------------------------------------------------------------------------


@dataclass
class ExportStats:
    num_rows: int = 0
    num_exported: int = 0
    num_corrected: int = 0
    num_duplicates: int = 0
    num_skipped: int = 0  # bad rating, cut-off answer, no usable conversation


def training_example(row: StoredCompletion, min_rating: int | None) -> dict[str, Any] | None:
    """The chat fine-tuning example of one stored completion, or None to leave it out."""
    messages = text_turns(row)
    if not any(m["role"] == "user" for m in messages):
        return None
    if row.correction:
        answer = row.correction
    else:
        if min_rating is not None and (row.rating is None or row.rating < min_rating):
            return None
        if row.rating is not None and row.rating <= BAD_RATING:
            return None
        choices = row.response.get("choices") or []
        if row.rating is None and choices and choices[0].get("finish_reason") not in ("stop", None):
            return None  # cut off (length, content_filter) and nobody vouched for it
        answer = stored_answer(row)
        if answer is None:
            return None
    return {"messages": messages + [{"role": "assistant", "content": answer}]}


def export_rows(
    db: Database, *, tenant_id: str | None, since: int | None, model: str | None
) -> Iterator[StoredCompletion]:
    """The stored completions an export reads, oldest stored first, in one session."""
    q = select(StoredCompletion).order_by(StoredCompletion.stored_at, StoredCompletion.id)
    if tenant_id:
        q = q.where(StoredCompletion.tenant_id == tenant_id)
    if since is not None:
        q = q.where(StoredCompletion.created_at >= since)
    if model:
        q = q.where(StoredCompletion.model == model)
    with db.session() as session:
        yield from session.execute(q).scalars()


def digest(record: dict[str, Any]) -> str:
    """What makes two exported records duplicates: their JSON, keys sorted."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def export_dataset(
    db: Database,
    *,
    tenant_id: str | None = None,
    since: int | None = None,
    min_rating: int | None = None,
    model: str | None = None,
) -> tuple[list[dict[str, Any]], ExportStats]:
    """Fine-tuning examples from stored completions, oldest first, without duplicates."""
    stats, seen, examples = ExportStats(), set(), []
    for row in export_rows(db, tenant_id=tenant_id, since=since, model=model):
        stats.num_rows += 1
        example = training_example(row, min_rating)
        if example is None:
            stats.num_skipped += 1
            continue
        fingerprint = digest(example)
        if fingerprint in seen:
            stats.num_duplicates += 1
            continue
        seen.add(fingerprint)
        stats.num_corrected += bool(row.correction)
        examples.append(example)
    stats.num_exported = len(examples)
    return examples, stats


def to_jsonl(examples: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in examples)


# --- the inference hook -----------------------------------------------------------------------


def completion_body(call: Any, outcome: Any) -> dict[str, Any]:
    """The chat.completion object of a finished call, as the client received it."""
    return {
        "id": call.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
            for c in outcome.choices
        ],
        "usage": {
            "prompt_tokens": outcome.num_prompt_tokens,
            "completion_tokens": outcome.num_output_tokens,
            "total_tokens": outcome.num_prompt_tokens + outcome.num_output_tokens,
        },
    }


# Responses calls are captured as the chat completions they ran as; their `store: true`
# (OpenAI's default there) keeps the response for previous_response_id, so it leaves
# capture to the key's, tenant's or server's default, and `store: false` opts out.
CAPTURED = ("chat.completions", "responses")


class CaptureHook(InferenceHook):
    """Stores finished chat completions (and Responses calls) whose request, key or tenant
    asks for it."""

    def __init__(self, db: Database, guard: Guard, config: CaptureConfig) -> None:
        self.db, self.guard, self.config = db, guard, config

    async def finish(self, call: InferenceCall, outcome: InferenceOutcome) -> None:
        if call.endpoint not in CAPTURED or call.messages is None:
            return
        if outcome.status_code != 200 or outcome.is_client_gone or not outcome.choices:
            return
        requested = getattr(call, "store", None)
        if requested is not None or call.principal.is_from_key_row:  # answered without I/O
            wanted = should_store(self.db, call.principal, requested, self.config)
        else:
            wanted = await asyncio.to_thread(
                should_store, self.db, call.principal, requested, self.config
            )
        if not wanted:
            return
        sampling = call.sampling
        params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "n": sampling.n,
                  "max_tokens": sampling.max_tokens, "seed": sampling.seed,
                  "stop": list(sampling.stop) or None}  # fmt: skip
        await asyncio.to_thread(
            store_completion,
            self.db,
            self.guard,
            principal=call.principal,
            completion=completion_body(call, outcome),
            messages=call.messages,
            params=params,
            metadata=call.metadata,
        )
