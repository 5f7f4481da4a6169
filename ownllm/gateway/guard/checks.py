"""Apply a tenant's rules at one stage: messages in, completions out, what capture keeps.

`Guard` holds the loaded policy (and the optional classifier) and answers
three questions: is this prompt allowed, and with which redactions
(`check_messages`); what may be sent of this completion so far
(`output_checker`, one per choice, streaming); what may be stored
(`check_messages` / `check_text` at the `capture` stage). Every answer is a
`Decision`: per-rule hit counts and the blocking rule, never the text, which
`events_for` turns into `guard_events` rows.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ownllm.errors import ContentPolicyError
from ownllm.gateway.guard.classifier import Classifier, classifier_hits
from ownllm.gateway.guard.heuristics import text_views
from ownllm.gateway.guard.policy import Policy, PolicyError, RuleSet
from ownllm.gateway.guard.rules import Rule
from ownllm.gateway.guard.stream import SpanChecker, check_spans

# Heuristics look for attacks in what users and tools send, not in the developer's own
# system prompt (which legitimately says "you are …" and "do not reveal …").
_TRUSTED_ROLES = ("system", "developer")


@dataclass
class Decision:
    """What the rules of one stage found: hits per rule id and the rule that blocked."""

    stage: str
    counts: Counter[str] = field(default_factory=Counter)
    actions: dict[str, str] = field(default_factory=dict)  # rule id -> action
    blocked_by: Rule | None = None

    def add(self, rule: Rule, n: int = 1) -> None:
        if n > 0:
            self.counts[rule.id] += n
            self.actions[rule.id] = rule.action
            if rule.action == "block" and self.blocked_by is None:
                self.blocked_by = rule

    def merge(self, counts: Counter[str], rules: RuleSet) -> None:
        for rule_id, n in counts.items():
            rule = rules.get(rule_id)
            if rule is not None:
                self.add(rule, n)

    @property
    def is_blocked(self) -> bool:
        return self.blocked_by is not None

    def events(self) -> list[tuple[str, list[str], dict[str, int]]]:
        """(action, rule ids, {rule id: count}) per action that fired."""
        out = []
        for action in ("block", "redact", "flag"):
            ids = sorted(r for r, a in self.actions.items() if a == action)
            if ids:
                out.append((action, ids, {r: int(self.counts[r]) for r in ids}))
        return out


def block_error(rule: Rule, param: str | None, decision: Decision) -> ContentPolicyError:
    """The 400 for a blocked prompt; carries the decision so its events can be recorded."""
    reason = rule.message or "The request was rejected by the content policy."
    error = ContentPolicyError(f"{reason} (rule '{rule.id}')", param=param)
    error.decision = decision  # type: ignore[attr-defined]
    return error


class OutputChecker:
    """One choice's completion at the output stage: `feed` each delta, `finish` at the end.

    When a block rule fires, the text before the blocked match is still returned once;
    every later call reports the block (None from `feed`, is_blocked from `finish`).
    """

    def __init__(self, guard: Guard, rules: RuleSet) -> None:
        self.rules = rules
        self.guard = guard
        stage_rules = rules.at("output")
        self.spans = SpanChecker(stage_rules)
        limits = [r for r in stage_rules if r.detector == "max_chars"]
        self._limit = min(limits, key=lambda r: r.limit) if limits else None
        self.decision = Decision("output")
        self._num_received = 0
        self._is_done = False

    def feed(self, text: str) -> str | None:
        """The text to send now ("" while held back), or None once a block rule fired."""
        if self._is_done:
            return None if self.is_blocked else ""
        rule = self._limit
        if rule is not None and self._num_received + len(text) > rule.limit:
            if rule.action == "block":
                return self._end(self.spans.feed(text[: rule.limit - self._num_received]), rule)
            if rule.id not in self.decision.counts:
                self.decision.add(rule)
        self._num_received += len(text)
        out = self.spans.feed(text)
        return self._end(out, None) if self.spans.is_blocked else out

    def finish(self) -> tuple[str, bool]:
        """(the held-back rest, whether a block rule cut the completion)."""
        out = "" if self._is_done else self._end("", None)
        return out or "", self.is_blocked

    def _end(self, out: str, limit_rule: Rule | None) -> str | None:
        self._is_done = True
        out += self.spans.finish()
        self.decision.merge(self.spans.counts, self.rules)
        if limit_rule is not None:
            self.decision.add(limit_rule)
        self.guard.flag_text(self.rules.at("output"), self.spans.text, self.decision)
        return None if self.is_blocked and not out else out

    @property
    def is_blocked(self) -> bool:
        return self.decision.is_blocked


class Guard:
    """The loaded policy, ready to check text for any tenant."""

    def __init__(self, policy: Policy, classifier: Classifier | None = None) -> None:
        self.policy = policy
        self.classifier = classifier
        uses_classifier = policy.rules.needs_classifier or any(
            r.needs_classifier for r in policy.tenants.values()
        )
        if uses_classifier and classifier is None:
            raise PolicyError(
                f"policy {policy.source!r} has classifier rules but no classifier is "
                "configured: set guard.classifier_path to a local model directory"
            )

    def rules_for(self, tenant_id: str) -> RuleSet:
        return self.policy.for_tenant(tenant_id)

    def flag_text(self, rules: tuple[Rule, ...], text: str, decision: Decision) -> None:
        """Run the non-span rules (heuristics, classifier, size) of a stage on `text`."""
        views = None  # made once, read by every heuristic rule
        for rule in rules:
            if rule.heuristic is not None:
                views = views or text_views(text)
                decision.add(rule, rule.heuristic.count(views))
            elif rule.detector == "classifier" and self.classifier is not None and text:
                decision.add(
                    rule, classifier_hits(self.classifier, text, rule.labels, rule.threshold)
                )

    def check_text(self, tenant_id: str, stage: str, text: str, decision: Decision | None = None,
                   *, is_trusted: bool = False) -> tuple[str, Decision]:  # fmt: skip
        """Check one whole text at `stage`: (the text with redactions, the decision).
        A block at the output stage cuts the text before the blocked match."""
        decision = decision or Decision(stage)
        rules = self.rules_for(tenant_id)
        stage_rules = rules.at(stage)
        if not is_trusted:
            self.flag_text(stage_rules, text, decision)
        output, checker = check_spans(stage_rules, text)
        decision.merge(checker.counts, rules)
        return output, decision

    def check_messages(self, tenant_id: str, stage: str, messages: list[dict[str, Any]],
                       param: str = "messages") -> tuple[list[dict[str, Any]], Decision]:  # fmt: skip
        """Check chat messages (or prompts as `{"content": …}`) at `stage`.

        Returns the messages with redactions applied (new dicts; the input is not changed)
        and the decision. At the input stage a block raises ContentPolicyError whose
        `param` names the message; at other stages the caller reads `decision.is_blocked`.
        """
        decision = Decision(stage)
        rules = self.rules_for(tenant_id)
        for rule in rules.at(stage):
            if rule.detector == "max_chars":
                total = sum(len(t) for m in messages for t in texts_of(m.get("content")))
                if total > rule.limit:
                    decision.add(rule)
                    if rule.action == "block" and stage == "input":
                        raise block_error(rule, param, decision)
        out = []
        for i, message in enumerate(messages):
            where = f"{param}[{i}].content" if param == "messages" else f"{param}[{i}]"
            trusted = message.get("role") in _TRUSTED_ROLES
            content = message.get("content")
            if isinstance(content, str):
                content, _ = self.check_text(
                    tenant_id, stage, content, decision, is_trusted=trusted
                )
            elif isinstance(content, list):
                content = [
                    self._check_part(tenant_id, stage, p, decision, trusted) for p in content
                ]
            if decision.is_blocked and stage == "input":
                raise block_error(decision.blocked_by, where, decision)
            out.append({**message, "content": content})
        return out, decision

    def _check_part(self, tenant_id: str, stage: str, part: Any, decision: Decision,
                    trusted: bool) -> Any:  # fmt: skip
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            text, _ = self.check_text(tenant_id, stage, part["text"], decision, is_trusted=trusted)
            return {**part, "text": text}
        return part

    def output_checker(self, tenant_id: str) -> OutputChecker:
        return OutputChecker(self, self.rules_for(tenant_id))


def texts_of(content: Any) -> list[str]:
    """The text pieces of a message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def events_for(tenant_id: str, request_id: str, decision: Decision) -> list[dict[str, Any]]:
    """guard_events rows for one decision (rule ids and counts only)."""
    now = time.time()
    return [
        dict(
            created_at=now,
            tenant_id=tenant_id,
            request_id=request_id,
            stage=decision.stage,
            action=action,
            rule_ids=ids,
            counts=counts,
        )  # fmt: skip
        for action, ids, counts in decision.events()
    ]


def record_events(db: Any, rows: list[dict[str, Any]]) -> None:
    """Insert guard_events rows (no-op without rows or database)."""
    if db is None or not rows:
        return
    from ownllm.store.schema import GuardEvent

    with db.session() as session:
        session.add_all(GuardEvent(**row) for row in rows)
