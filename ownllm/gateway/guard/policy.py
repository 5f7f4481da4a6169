"""The guardrail policy: rules from a TOML or YAML file, global with per-tenant overrides.

A rule names a detector, the stages it runs at and what happens on a hit:

    [[rules]]
    id = "pii.card"            # recorded in guard_events; tenants override by id
    detector = "payment_card"  # built-in | regex | deny_terms | heuristic | classifier | max_chars
    stages = ["capture"]       # input (the prompt), output (the completion), capture (what is stored)
    action = "redact"          # block | redact | flag

Tenants tighten or relax the global rules under `[tenants.NAME]`: `disable = [ids]`
drops rules, and each `[[tenants.NAME.rules]]` entry either overrides fields of the
global rule with the same id or adds a new rule. The shipped default policy is
`default_policy.toml` next to this module.

Left out: rule ordering priorities (every matching rule fires; block wins over redact
over flag) and policy hot-reload (restart the server to apply a changed file).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownllm.config import ConfigError
from ownllm.gateway.guard.detectors import (
    BUILTIN_PATTERNS,
    SpanDetector,
    builtin_detector,
    deny_terms_detector,
    make_span_detector,
)
from ownllm.gateway.guard.heuristics import (
    HEURISTIC_DETECTORS,
    HeuristicDetector,
    heuristic_detector,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ACTIONS = ("block", "redact", "flag")
STAGES = ("input", "output", "capture")
DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.toml")
_RULE_KEYS = {"id", "detector", "stages", "action", "placeholder", "pattern", "terms",
              "ignore_case", "limit", "labels", "threshold", "message", "description"}  # fmt: skip


class PolicyError(ConfigError):
    """The policy file cannot be used; the message names the file, the rule and the fix."""


@dataclass(frozen=True)
class Rule:
    id: str
    detector: str
    action: str
    stages: tuple[str, ...]
    placeholder: str = "[REDACTED]"
    message: str = ""
    span: SpanDetector | None = None  # span detectors: built-in, regex, deny_terms
    heuristic: HeuristicDetector | None = None
    limit: int = 0  # max_chars
    labels: tuple[str, ...] = ()  # classifier
    threshold: float = 0.5
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        if self.span is not None:
            return "span"
        if self.heuristic is not None:
            return "heuristic"
        return self.detector  # max_chars | classifier


def build_rule(raw: dict[str, Any]) -> Rule:
    """Validate one rule table; raises ValueError with what to change."""
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ValueError(
            f"unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(_RULE_KEYS))}"
        )
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise ValueError("every rule needs an `id` string")
    detector = raw.get("detector")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action = {action!r}: must be one of {', '.join(ACTIONS)}")
    stages = raw.get("stages", ["input"])
    if isinstance(stages, str):
        stages = [stages]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages = {stages!r}: each must be one of {', '.join(STAGES)}")
    common = dict(id=rule_id, detector=str(detector), action=action, stages=tuple(stages),
                  message=str(raw.get("message", "")), raw=dict(raw))  # fmt: skip
    placeholder = raw.get("placeholder")
    if detector in BUILTIN_PATTERNS:
        span = builtin_detector(detector)
        return Rule(**common, span=span, placeholder=placeholder or span.placeholder)
    if detector == "regex":
        pattern = raw.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("detector 'regex' needs a `pattern` string")
        flags = 2 if raw.get("ignore_case", False) else 0
        span = make_span_detector(rule_id, pattern, placeholder or "[REDACTED]", flags=flags)
        return Rule(**common, span=span, placeholder=span.placeholder)
    if detector == "deny_terms":
        terms = raw.get("terms")
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise ValueError("detector 'deny_terms' needs `terms`, a list of strings")
        span = deny_terms_detector(rule_id, terms, placeholder or "[REDACTED]")
        return Rule(**common, span=span, placeholder=span.placeholder)
    if detector in HEURISTIC_DETECTORS:
        if action == "redact":
            raise ValueError(f"detector {detector!r} finds no span to redact: use block or flag")
        if action == "block" and "output" in stages:
            raise ValueError(f"detector {detector!r} can only flag at the output stage")
        return Rule(**common, heuristic=heuristic_detector(detector))
    if detector == "max_chars":
        limit = raw.get("limit")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError("detector 'max_chars' needs `limit`, a positive integer")
        if action == "redact":
            raise ValueError("detector 'max_chars' can block or flag, not redact")
        return Rule(**common, limit=limit)
    if detector == "classifier":
        labels = raw.get("labels")
        threshold = raw.get("threshold", 0.5)
        if not isinstance(labels, list) or not labels:
            raise ValueError("detector 'classifier' needs `labels`, the unsafe label names")
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError("`threshold` must be a number between 0 and 1")
        if action == "redact":
            raise ValueError("detector 'classifier' can block or flag, not redact")
        if action == "block" and "output" in stages:
            raise ValueError("detector 'classifier' can only flag at the output stage")
        return Rule(**common, labels=tuple(map(str, labels)), threshold=float(threshold))
    known = sorted(BUILTIN_PATTERNS) + ["regex", "deny_terms", "max_chars", "classifier"]
    raise ValueError(
        f"detector = {detector!r}: must be one of {', '.join(known + list(HEURISTIC_DETECTORS))}"
    )


@dataclass(frozen=True)
class RuleSet:
    """The rules that apply to one tenant."""

    rules: tuple[Rule, ...]

    def at(self, stage: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if stage in r.stages)

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    @property
    def needs_classifier(self) -> bool:
        return any(r.detector == "classifier" for r in self.rules)


@dataclass(frozen=True)
class Policy:
    source: str
    rules: RuleSet
    tenants: dict[str, RuleSet] = field(default_factory=dict)

    def for_tenant(self, tenant_id: str) -> RuleSet:
        return self.tenants.get(tenant_id, self.rules)


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise PolicyError(f"policy file {str(path)!r} is not valid YAML: {e}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"policy file {str(path)!r} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {str(path)!r}: the top level must be a table/mapping")
    return data


def _rules(raw_rules: Any, where: str) -> list[dict[str, Any]]:
    if raw_rules is None:
        return []
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise PolicyError(f"{where}: `rules` must be a list of tables ([[rules]])")
    return raw_rules


def parse_policy(data: dict[str, Any], source: str = "<policy>") -> Policy:
    """Build a Policy from parsed TOML/YAML; raises PolicyError naming the bad rule."""
    unknown = set(data) - {"version", "rules", "tenants"}
    if unknown:
        raise PolicyError(
            f"policy {source!r}: unknown key {sorted(unknown)[0]!r}; known: version, rules, tenants"
        )
    raw_global = _rules(data.get("rules"), f"policy {source!r}")
    global_rules = _build_all(raw_global, f"policy {source!r}")
    tenants: dict[str, RuleSet] = {}
    raw_tenants = data.get("tenants") or {}
    if not isinstance(raw_tenants, dict):
        raise PolicyError(f"policy {source!r}: `tenants` must be a table of tenant names")
    by_id = {r["id"]: r for r in raw_global}
    for tenant, spec in raw_tenants.items():
        where = f"policy {source!r}, tenant {tenant!r}"
        if not isinstance(spec, dict) or set(spec) - {"disable", "rules"}:
            raise PolicyError(f"{where}: allowed keys are `disable` (rule ids) and `rules`")
        disabled = spec.get("disable", [])
        missing = [d for d in disabled if d not in by_id]
        if missing:
            raise PolicyError(f"{where}: disable names unknown rule {missing[0]!r}")
        merged = {rid: dict(r) for rid, r in by_id.items() if rid not in disabled}
        for override in _rules(spec.get("rules"), where):
            rid = override.get("id")
            merged[rid] = {**merged.get(rid, {}), **override}
        tenants[str(tenant)] = RuleSet(tuple(_build_all(list(merged.values()), where)))
    return Policy(source=source, rules=RuleSet(tuple(global_rules)), tenants=tenants)


def _build_all(raw_rules: list[dict[str, Any]], where: str) -> list[Rule]:
    out, seen = [], set()
    for i, raw in enumerate(raw_rules):
        try:
            rule = build_rule(raw)
        except ValueError as e:
            name = f" (id {raw.get('id')!r})" if raw.get("id") else ""
            raise PolicyError(f"{where}: rules[{i}]{name}: {e}") from None
        if rule.id in seen:
            raise PolicyError(f"{where}: rule id {rule.id!r} appears twice")
        seen.add(rule.id)
        out.append(rule)
    return out


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy file (TOML, or YAML by .yaml/.yml suffix); None: the shipped default."""
    path = Path(path) if path else DEFAULT_POLICY_PATH
    if not path.is_file():
        raise PolicyError(f"policy file {str(path)!r} does not exist")
    return parse_policy(_read(path), str(path))
