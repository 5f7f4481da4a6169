"""The guardrail policy: rules from a TOML or YAML file, global with per-tenant overrides.

A rule names a detector, the stages it runs at and what happens on a hit:

    [[rules]]
    id = "pii.card"            # recorded in guard_events; tenants override by id
    detector = "payment_card"  # built-in | regex | deny_terms | heuristic | classifier | max_chars
    stages = ["capture"]       # input (the prompt), output (the completion), capture (what is stored)
    action = "redact"          # block | redact | flag

Tenants tighten or relax the global rules under `[tenants.NAME]`: `disable = [ids]`
drops rules, and each `[[tenants.NAME.rules]]` entry either overrides fields of the
global rule with the same id or adds a new rule. Each rule table is validated by
`rules.py`; a bad one is refused with one line naming the file, the rule's position and
id, the key, its value and what is allowed. The shipped default policy is
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
from ownllm.gateway.guard.rules import Rule, build_rule, show

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.toml")


class PolicyError(ConfigError):
    """The policy file cannot be used; the message names the file, the rule and the fix."""


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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {str(path)!r} cannot be read: {e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:  # its message spans lines; a startup error is one
            problem = " ".join(str(e).split())
            raise PolicyError(f"policy file {str(path)!r} is not valid YAML: {problem}") from None
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
    where = f"policy {source!r}"
    unknown = sorted(set(map(str, data)) - {"version", "rules", "tenants"})
    if unknown:
        raise PolicyError(f"{where}: unknown key {unknown[0]!r}; known: version, rules, tenants")
    raw_rules = _rules(data.get("rules"), where)
    global_rules = _build_all([(f"rules[{i}]", raw) for i, raw in enumerate(raw_rules)], where)
    raw_tenants = data.get("tenants") or {}
    if not isinstance(raw_tenants, dict):
        raise PolicyError(f"{where}: `tenants` must be a table of tenant names")
    by_id = {rule.id: rule.raw for rule in global_rules}
    tenants = {
        str(tenant): _tenant_rules(by_id, spec, f"{where}, tenant {tenant!r}")
        for tenant, spec in raw_tenants.items()
    }
    return Policy(source=source, rules=RuleSet(tuple(global_rules)), tenants=tenants)


def _tenant_rules(by_id: dict[str, dict[str, Any]], spec: Any, where: str) -> RuleSet:
    """The global rules less those `spec` disables, with its overrides merged in by id."""
    if not isinstance(spec, dict) or set(spec) - {"disable", "rules"}:
        raise PolicyError(f"{where}: allowed keys are `disable` (rule ids) and `rules`")
    disabled = spec.get("disable", [])
    if not isinstance(disabled, list) or not all(isinstance(d, str) for d in disabled):
        raise PolicyError(f"{where}: disable = {show(disabled)}: must be a list of rule ids")
    missing = [d for d in disabled if d not in by_id]
    if missing:
        raise PolicyError(f"{where}: disable names unknown rule {missing[0]!r}")
    # (label, table) by id; an inherited table was valid as a global rule
    merged = {rid: ("", raw) for rid, raw in by_id.items() if rid not in disabled}
    for i, override in enumerate(_rules(spec.get("rules"), where)):
        rid = override.get("id")
        if not isinstance(rid, str):
            raise PolicyError(f"{where}: rules[{i}]: every rule needs `id`, a non-empty string")
        merged[rid] = (f"rules[{i}]", {**merged.get(rid, ("", {}))[1], **override})
    return RuleSet(tuple(_build_all(list(merged.values()), where)))


def _build_all(tables: list[tuple[str, dict[str, Any]]], where: str) -> list[Rule]:
    """Each (label, rule table) built; the first bad one raises PolicyError naming it."""
    out, seen = [], set()
    for label, raw in tables:
        try:
            rule = build_rule(raw)
        except ValueError as e:
            name = f" (id {raw.get('id')!r})" if raw.get("id") else ""
            raise PolicyError(f"{where}: {label}{name}: {e}") from None
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
