"""One guardrail rule: its table in a policy file, validated per detector, and the Rule it builds.

A policy file is untrusted input, so each detector family has a typed model (pydantic,
strict: a string is not a number and `true` is not 1), and the models form one union
discriminated by `detector`. A bad table is refused with one line naming the field, the
value and what is allowed (`action = 'drop': must be one of block, redact, flag`); the
policy adds which rule of which file.

Left out: refusing a known key that the rule's detector does not use (`pattern` on an
`email` rule is ignored), because a tenant override that changes a rule's detector
inherits the keys of the global rule it overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args

import regex
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

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

Action = Literal["block", "redact", "flag"]
Stage = Literal["input", "output", "capture"]
ACTIONS: tuple[str, ...] = get_args(Action)
STAGES: tuple[str, ...] = get_args(Stage)
DETECTORS = (
    *sorted(BUILTIN_PATTERNS),
    "regex",
    "deny_terms",
    "max_chars",
    "classifier",
    *HEURISTIC_DETECTORS,
)
DEFAULT_PLACEHOLDER = "[REDACTED]"


@dataclass(frozen=True)
class Rule:
    id: str
    detector: str
    action: str
    stages: tuple[str, ...]
    placeholder: str = DEFAULT_PLACEHOLDER
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


# What each key of a rule table must be, as the error messages say it.
ALLOWED = {
    "id": "a non-empty string",
    "detector": f"one of {', '.join(DETECTORS)}",
    "action": f"one of {', '.join(ACTIONS)}",
    "stages": f"a non-empty list of {', '.join(STAGES)}",
    "message": "a string",
    "description": "a string",
    "placeholder": "a string",
    "pattern": "a bounded regular expression, as a string",
    "ignore_case": "true or false",
    "terms": "a non-empty list of strings",
    "limit": "a positive integer",
    "labels": "a non-empty list of the unsafe label names",
    "threshold": "a number between 0 and 1",
}


class _Spec(BaseModel):
    """The keys every rule has."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: str = Field(pattern=r"\S")
    detector: str
    action: Action
    stages: list[Stage] = Field(default_factory=lambda: ["input"], min_length=1)
    message: str = ""
    description: str = ""

    @field_validator("stages", mode="before")
    @classmethod
    def _one_stage(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def rule(self, raw: dict[str, Any]) -> Rule:
        """The Rule this table describes; raises ValueError when the keys do not fit together."""
        raise NotImplementedError

    def _common(self, raw: dict[str, Any]) -> dict[str, Any]:
        return dict(id=self.id, detector=self.detector, action=self.action,
                    stages=tuple(self.stages), message=self.message, raw=dict(raw))  # fmt: skip

    def _refuse_spanless_actions(self) -> None:
        """Detectors that score the whole text have no span to redact, and cannot take back
        output already streamed, so they only flag at the output stage."""
        if self.action == "redact":
            raise ValueError(
                f"action = 'redact': detector {self.detector!r} finds no span to redact; "
                "use block or flag"
            )
        if self.action == "block" and "output" in self.stages:
            raise ValueError(
                f"action = 'block': detector {self.detector!r} can only flag at the output stage"
            )


class _BuiltinSpec(_Spec):
    detector: Literal[tuple(BUILTIN_PATTERNS)]  # type: ignore[valid-type]
    placeholder: str | None = None

    def rule(self, raw: dict[str, Any]) -> Rule:
        span = builtin_detector(self.detector)
        return Rule(
            **self._common(raw), span=span, placeholder=self.placeholder or span.placeholder
        )


class _RegexSpec(_Spec):
    detector: Literal["regex"]
    pattern: str = Field(min_length=1)
    ignore_case: bool = False
    placeholder: str | None = None

    def rule(self, raw: dict[str, Any]) -> Rule:
        flags = regex.IGNORECASE if self.ignore_case else 0
        placeholder = self.placeholder or DEFAULT_PLACEHOLDER
        try:
            span = make_span_detector(self.id, self.pattern, placeholder, flags=flags)
        except ValueError as e:
            raise ValueError(f"pattern = {show(self.pattern)}: {e}") from None
        return Rule(**self._common(raw), span=span, placeholder=span.placeholder)


class _DenyTermsSpec(_Spec):
    detector: Literal["deny_terms"]
    terms: list[str] = Field(min_length=1)
    placeholder: str | None = None

    def rule(self, raw: dict[str, Any]) -> Rule:
        placeholder = self.placeholder or DEFAULT_PLACEHOLDER
        try:
            span = deny_terms_detector(self.id, self.terms, placeholder)
        except ValueError as e:  # every term is blank
            raise ValueError(f"terms = {show(self.terms)}: {e}") from None
        return Rule(**self._common(raw), span=span, placeholder=span.placeholder)


class _HeuristicSpec(_Spec):
    detector: Literal[HEURISTIC_DETECTORS]  # type: ignore[valid-type]

    def rule(self, raw: dict[str, Any]) -> Rule:
        self._refuse_spanless_actions()
        return Rule(**self._common(raw), heuristic=heuristic_detector(self.detector))


class _MaxCharsSpec(_Spec):
    detector: Literal["max_chars"]
    limit: int = Field(ge=1)

    def rule(self, raw: dict[str, Any]) -> Rule:
        if self.action == "redact":  # a block at the output stage cuts the stream at the limit
            raise ValueError(
                "action = 'redact': detector 'max_chars' can block or flag, not redact"
            )
        return Rule(**self._common(raw), limit=self.limit)


class _ClassifierSpec(_Spec):
    detector: Literal["classifier"]
    labels: list[str] = Field(min_length=1)
    threshold: float = Field(0.5, ge=0, le=1)

    def rule(self, raw: dict[str, Any]) -> Rule:
        self._refuse_spanless_actions()
        return Rule(**self._common(raw), labels=tuple(self.labels), threshold=self.threshold)


_SPECS = (_BuiltinSpec, _RegexSpec, _DenyTermsSpec, _HeuristicSpec, _MaxCharsSpec, _ClassifierSpec)
_RULE_SPEC: TypeAdapter[_Spec] = TypeAdapter(
    Annotated[Union[_SPECS], Field(discriminator="detector")]  # noqa: UP007
)
RULE_KEYS = frozenset(name for spec in _SPECS for name in spec.model_fields)


def build_rule(raw: dict[str, Any]) -> Rule:
    """Validate one rule table and build its Rule; raises ValueError saying what to change."""
    unknown = sorted(set(map(str, raw)) - RULE_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; known: {', '.join(sorted(RULE_KEYS))}")
    try:
        spec = _RULE_SPEC.validate_python(raw)
    except ValidationError as e:
        raise ValueError(_explain(e.errors()[0], raw)) from None
    return spec.rule(raw)


def _explain(error: Any, raw: dict[str, Any]) -> str:
    """One pydantic error as `key = value: must be what is allowed`."""
    if error["type"] == "union_tag_not_found":
        name = "detector"
    elif error["type"] == "union_tag_invalid":
        return f"detector = {show(raw['detector'])}: must be {ALLOWED['detector']}"
    else:
        name = error["loc"][1]  # loc[0] is the detector that chose the model
    if name not in raw:
        who = "every rule" if name in _Spec.model_fields else f"detector {raw['detector']!r}"
        return f"{who} needs `{name}`, {ALLOWED[name]}"
    return f"{name} = {show(raw[name])}: must be {ALLOWED[name]}"


def show(value: Any, limit: int = 80) -> str:
    """`value` as a message quotes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
