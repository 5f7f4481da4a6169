"""The guard in the inference pipeline (see `ownllm.gateway.hooks` for the stages).

`check_input` applies the tenant's input rules to the messages (or prompts, or
embedding inputs): a block raises ContentPolicyError (400, code
content_policy_violation, `param` naming the message), redactions replace the
text the model sees.
`check_output` feeds each delta of each choice to its own `OutputChecker` and
returns what may be sent; `flush_output` releases the held-back rest when the
choice ends. `finish` writes the call's guard_events rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ownllm.config import GuardConfig
from ownllm.errors import ContentPolicyError
from ownllm.gateway.guard.checks import (
    Decision,
    Guard,
    OutputChecker,
    events_for,
    record_events,
    texts_of,
)
from ownllm.gateway.guard.policy import PolicyError, load_policy
from ownllm.gateway.hooks import InferenceCall, InferenceHook, InferenceOutcome

INLINE_MAX_CHARS = 2_000  # longer prompts are checked in a thread
_UNSET: Any = object()


class GuardHook(InferenceHook):
    """The tenant's guard rules at the input, on each output delta, and in guard_events."""

    def __init__(self, guard: Guard, db: Any) -> None:
        self.guard = guard
        self.db = db
        self._input: dict[str, Decision] = {}
        self._outputs: dict[str, dict[int, OutputChecker] | None] = {}

    async def check_input(self, call: InferenceCall) -> None:
        tenant_id = call.principal.tenant_id
        try:
            if call.messages is not None:
                messages, decision = await _check(self.guard, tenant_id, call.messages, "messages")
                if messages != call.messages:
                    call.messages = messages
            elif call.prompts is not None:
                call.prompts, decision = await _check_texts(
                    self.guard, tenant_id, call.prompts, "prompt"
                )
            elif call.inputs is not None:
                # embeddings: a redacted input is embedded as redacted, so the vector (and any
                # store built from it) never encodes what the policy keeps from the model
                call.inputs, decision = await _check_texts(
                    self.guard, tenant_id, call.inputs, "input"
                )
            else:
                return
        except ContentPolicyError as e:
            await self._record(
                tenant_id, call.request_id, [getattr(e, "decision", Decision("input"))]
            )
            raise
        self._input[call.request_id] = decision

    async def check_output(self, call: InferenceCall, index: int, text: str) -> str | None:
        checker = self._checker(call, index)
        return text if checker is None else checker.feed(text)

    async def flush_output(self, call: InferenceCall, index: int) -> tuple[str, bool]:
        """The held-back text of a choice that ended, and whether a block rule cut it."""
        checker = self._checker(call, index)
        return ("", False) if checker is None else checker.finish()

    async def finish(self, call: InferenceCall, outcome: InferenceOutcome) -> None:
        decisions = []
        if (d := self._input.pop(call.request_id, None)) is not None:
            decisions.append(d)
        for checker in (self._outputs.pop(call.request_id, None) or {}).values():
            checker.finish()  # a choice cut short by an error or disconnect: count what came
            decisions.append(checker.decision)
        await self._record(call.principal.tenant_id, call.request_id, decisions)

    def _checker(self, call: InferenceCall, index: int) -> OutputChecker | None:
        """The choice's checker; None when the tenant has no output rules (the default
        policy has none), so its text passes untouched at no cost per token."""
        per_call = self._outputs.get(call.request_id, _UNSET)
        if per_call is _UNSET:
            has_rules = bool(self.guard.rules_for(call.principal.tenant_id).at("output"))
            per_call = self._outputs[call.request_id] = {} if has_rules else None
        if per_call is None:
            return None
        if index not in per_call:
            per_call[index] = self.guard.output_checker(call.principal.tenant_id)
        return per_call[index]

    async def _record(self, tenant_id: str, request_id: str, decisions: list[Decision]) -> None:
        rows = [row for d in decisions for row in events_for(tenant_id, request_id, d)]
        if rows:
            await asyncio.to_thread(record_events, self.db, rows)


async def _check(
    guard: Guard, tenant_id: str, messages: list[dict[str, Any]], param: str
) -> tuple[list[dict[str, Any]], Decision]:
    """The input check: on the event loop for prompts up to `INLINE_MAX_CHARS`, else in a
    thread. The heuristics are regular expressions, which hold the GIL, so a thread gains
    nothing but time slices for the event loop on a long prompt (~1.2 ms per 1,000
    characters), while the hop to it and back costs 1-2 ms at p50 and tens of ms at p99
    with many streams in flight."""
    size = sum(len(t) for m in messages for t in texts_of(m.get("content")))
    if guard.classifier is None and size <= INLINE_MAX_CHARS:  # a classifier runs a model
        return guard.check_messages(tenant_id, "input", messages, param)
    return await asyncio.to_thread(guard.check_messages, tenant_id, "input", messages, param)


async def _check_texts(
    guard: Guard, tenant_id: str, texts: list[str], param: str
) -> tuple[list[str], Decision]:
    """Plain texts (prompts, embedding inputs) checked as user messages; blocks name
    `param[i]`."""
    as_messages = [{"role": "user", "content": t} for t in texts]
    checked, decision = await _check(guard, tenant_id, as_messages, param)
    return [m["content"] for m in checked], decision


def load_guard(config: GuardConfig) -> Guard:
    """The Guard of `guard.policy_file` (the shipped policy when unset) and, when set,
    `guard.classifier_path`.

    Raises PolicyError (a ConfigError) with one line when the policy cannot be used."""
    classifier = None
    if config.classifier_path:
        from ownllm.gateway.guard.classifier import load_classifier

        try:
            classifier = load_classifier(config.classifier_path)
        except ValueError as e:
            raise PolicyError(str(e)) from None
    return Guard(load_policy(config.policy_file or None), classifier)
