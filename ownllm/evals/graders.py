"""Testing criteria (graders) in the shape of OpenAI's Evals API, checked and applied.

`check_criteria` validates an eval's `testing_criteria` when it is created (a 400 naming
`testing_criteria[i].field`); `grade` applies one criterion to one item and its sample.

    string_check     {"input", "reference", "operation": eq | ne | like | ilike}
                     (like: input contains reference; ilike: the same, ignoring case)
    regex            {"input", "pattern", "ignore_case"}            ownllm extension
    json_schema      {"input", "schema"}: input parses as JSON and validates   extension
    text_similarity  {"input", "reference", "evaluation_metric": cosine | fuzzy_match,
                     "pass_threshold"}: cosine of the shipped MiniLM's embeddings
    label_model      {"model", "input": [messages], "labels", "passing_labels"}
    score_model      {"model", "input": [messages], "range": [lo, hi], "pass_threshold"}
    redteam          {}: the item's red-team detector (`ownllm.redteam.detectors`) on the
                     sample; passed when the attack failed (a benign prompt: was answered)

`input` and `reference` are templates over the item and the sample: `{{item.answer}}`,
`{{sample.output_text}}` (`ownllm.evals.templates`). The model-graded criteria ask a
served model, named in the criterion, through the caller's `ask` (the inference path),
constrained by a JSON schema to `{"label": one of labels}` or `{"score": number}`;
`embed` gives the vectors of text_similarity. Left out: OpenAI's python and multi
graders, and the bleu / rouge / meteor metrics.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jsonschema

from ownllm.errors import InvalidRequestError
from ownllm.evals.templates import render, render_messages

TYPES = (
    "string_check", "regex", "json_schema", "text_similarity", "label_model", "score_model",
    "redteam",
)  # fmt: skip
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("cosine", "fuzzy_match")
MAX_CRITERIA = 16
MAX_PATTERN_CHARS = 1000
MAX_GRADED_CHARS = 100_000  # of one input: regexes and JSON stay bounded

Ask = Callable[[str, list[dict[str, str]], dict[str, Any]], Awaitable[str]]
Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True)
class Grade:
    """One criterion's verdict on one item (OpenAI's output item `results` entry)."""

    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None  # what a model grader said

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "score": self.score,
            "passed": self.passed,
            "sample": self.sample,
        }


def _need(c: dict, key: str, kind: type | tuple, where: str) -> Any:
    value = c.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        what = getattr(kind, "__name__", "value")
        raise InvalidRequestError(f"{where}.{key} is required ({what})", param=f"{where}.{key}")
    return value


def _check_messages(c: dict, where: str) -> None:
    messages = c.get("input")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            f"{where}.input must be a list of messages", param=f"{where}.input"
        )
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not m.get("role"):
            raise InvalidRequestError(
                f"{where}.input[{j}] needs a role and a string content",
                param=f"{where}.input[{j}]",
            )


def check_criteria(criteria: Any) -> list[dict[str, Any]]:
    """The criteria as stored (each with a `name`); a 400 naming the first bad field."""
    if not isinstance(criteria, list) or not criteria:
        raise InvalidRequestError(
            "testing_criteria must be a non-empty list", param="testing_criteria"
        )
    if len(criteria) > MAX_CRITERIA:
        raise InvalidRequestError(
            f"at most {MAX_CRITERIA} testing criteria per eval", param="testing_criteria"
        )
    out, names = [], set()
    for i, c in enumerate(criteria):
        where = f"testing_criteria[{i}]"
        if not isinstance(c, dict) or c.get("type") not in TYPES:
            raise InvalidRequestError(
                f"{where}.type must be one of {', '.join(TYPES)}", param=f"{where}.type"
            )
        kind = c["type"]
        name = c.get("name") or f"{kind}-{i}"
        if not isinstance(name, str) or name in names:
            raise InvalidRequestError(
                f"{where}.name must be a unique string", param=f"{where}.name"
            )
        names.add(name)
        if kind in ("string_check", "regex", "json_schema", "text_similarity"):
            _need(c, "input", str, where)
        if kind == "string_check":
            _need(c, "reference", str, where)
            if c.get("operation") not in STRING_OPERATIONS:
                raise InvalidRequestError(
                    f"{where}.operation must be one of {', '.join(STRING_OPERATIONS)}",
                    param=f"{where}.operation",
                )
        elif kind == "regex":
            pattern = _need(c, "pattern", str, where)
            if len(pattern) > MAX_PATTERN_CHARS:
                raise InvalidRequestError(f"{where}.pattern is too long", param=f"{where}.pattern")
            try:
                re.compile(pattern)
            except re.error as e:
                raise InvalidRequestError(
                    f"{where}.pattern is not a valid regular expression: {e}",
                    param=f"{where}.pattern",
                ) from None
        elif kind == "json_schema":
            schema = _need(c, "schema", dict, where)
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as e:
                raise InvalidRequestError(
                    f"{where}.schema is not a valid JSON schema: {e.message}",
                    param=f"{where}.schema",
                ) from None
        elif kind == "text_similarity":
            _need(c, "reference", str, where)
            if c.get("evaluation_metric", "cosine") not in METRICS:
                raise InvalidRequestError(
                    f"{where}.evaluation_metric must be one of {', '.join(METRICS)}",
                    param=f"{where}.evaluation_metric",
                )
            _threshold(c, where)
        elif kind in ("label_model", "score_model"):
            _need(c, "model", str, where)
            _check_messages(c, where)
        if kind == "label_model":
            labels = _need(c, "labels", list, where)
            passing = _need(c, "passing_labels", list, where)
            if not labels or not all(isinstance(x, str) for x in labels):
                raise InvalidRequestError(
                    f"{where}.labels must be strings", param=f"{where}.labels"
                )
            if not passing or not set(passing) <= set(labels):
                raise InvalidRequestError(
                    f"{where}.passing_labels must be some of labels",
                    param=f"{where}.passing_labels",
                )
        elif kind == "score_model":
            lo, hi = c.get("range", [0, 1])
            if not all(isinstance(v, int | float) for v in (lo, hi)) or lo >= hi:
                raise InvalidRequestError(
                    f"{where}.range must be [low, high]", param=f"{where}.range"
                )
            _threshold(c, where, lo, hi)
        out.append({**c, "name": name})
    return out


def _threshold(c: dict, where: str, lo: float = 0.0, hi: float = 1.0) -> None:
    value = c.get("pass_threshold")
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidRequestError(
            f"{where}.pass_threshold must be a number from {lo} to {hi}",
            param=f"{where}.pass_threshold",
        )


def string_check(text: str, reference: str, operation: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.lower() in text.lower()  # ilike


def json_valid(text: str, schema: dict) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return jsonschema.validators.validator_for(schema)(schema).is_valid(value)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def label_format(labels: list[str]) -> dict[str, Any]:
    """The response format that makes a grader model answer one of `labels`."""
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "label", "schema": schema}}


SCORE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "score",
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "number"}},
            "required": ["score"],
            "additionalProperties": False,
        },
    },
}


def parse_label(text: str, labels: list[str]) -> str | None:
    """The label a grader answered: the JSON's `label`, else the first label named."""
    try:
        value = json.loads(text)
        if isinstance(value, dict) and value.get("label") in labels:
            return value["label"]
    except ValueError:
        pass
    lowered = text.lower()
    found = [(lowered.find(x.lower()), x) for x in labels if x.lower() in lowered]
    return min(found)[1] if found else None


def parse_score(text: str) -> float | None:
    try:
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("score"), int | float):
            return float(value["score"])
    except ValueError:
        pass
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None


async def grade(
    criterion: dict[str, Any],
    item: dict[str, Any],
    sample: dict[str, Any],
    ask: Ask,
    embed: Embed,
) -> Grade:
    """Apply one (checked) criterion to an item and its sample."""
    kind, name = criterion["type"], criterion["name"]
    context = {"item": item, "sample": sample}
    if kind in ("string_check", "regex", "json_schema", "text_similarity"):
        text = render(criterion["input"], context)[:MAX_GRADED_CHARS]
    if kind == "string_check":
        passed = string_check(text, render(criterion["reference"], context), criterion["operation"])
        return Grade(name, kind, float(passed), passed)
    if kind == "regex":
        flags = re.IGNORECASE if criterion.get("ignore_case") else 0
        passed = re.search(criterion["pattern"], text, flags) is not None
        return Grade(name, kind, float(passed), passed)
    if kind == "json_schema":
        passed = json_valid(text, criterion["schema"])
        return Grade(name, kind, float(passed), passed)
    if kind == "text_similarity":
        reference = render(criterion["reference"], context)
        if criterion.get("evaluation_metric", "cosine") == "fuzzy_match":
            score = difflib.SequenceMatcher(None, text, reference).ratio()
        else:
            a, b = await embed([text, reference])
            score = cosine(a, b)
        return Grade(name, kind, score, score >= criterion["pass_threshold"])
    if kind == "redteam":
        from ownllm.redteam.detectors import attack_succeeded

        hit = attack_succeeded(item["detector"], sample)
        return Grade(name, kind, float(not hit), not hit)
    messages = render_messages(criterion["input"], context)
    if kind == "label_model":
        labels = criterion["labels"]
        answer = await ask(criterion["model"], messages, label_format(labels))
        label = parse_label(answer, labels)
        passed = label in criterion["passing_labels"]
        return Grade(name, kind, float(passed), passed, {"output_text": answer, "label": label})
    answer = await ask(criterion["model"], messages, SCORE_FORMAT)  # score_model
    score = parse_score(answer)
    lo, hi = criterion.get("range", [0, 1])
    is_valid = score is not None and lo <= score <= hi
    passed = is_valid and score >= criterion["pass_threshold"]
    sample_out = {"output_text": answer, "score": score}
    return Grade(name, kind, score if is_valid else float(lo), bool(passed), sample_out)
