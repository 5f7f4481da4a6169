"""OpenAI's attribute filters for search and `file_search`, checked once, then applied.

    {"type": "eq" | "ne" | "gt" | "gte" | "lt" | "lte" | "in" | "nin", "key": K, "value": V}
    {"type": "and" | "or", "filters": [filter, ...]}

Attributes belong to a file in a store, so a filter picks files, and search looks only at
their chunks. `gt`/`gte`/`lt`/`lte` compare numbers with numbers and strings with strings
(a value of the other type does not match); `in`/`nin` take a list. A file without the key
matches only `ne` and `nin`. A malformed filter is a 400 naming where it is wrong.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ownllm.errors import InvalidRequestError

Predicate = Callable[[dict[str, Any]], bool]
MAX_DEPTH = 8
_ORDERED = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_SCALARS = (str, int, float, bool)


def parse_filter(value: Any, param: str = "filters", depth: int = 0) -> Predicate:
    """A predicate over a file's attributes; InvalidRequestError for a bad filter."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidRequestError(
            f"Invalid '{param}': expected a filter object with a type.", param=param
        )
    kind = value["type"]
    if kind in ("and", "or"):
        if depth >= MAX_DEPTH:
            raise InvalidRequestError(
                f"Invalid '{param}': filters nest at most {MAX_DEPTH} deep.", param=param
            )
        items = value.get("filters")
        if not isinstance(items, list) or not items:
            raise InvalidRequestError(
                f"Invalid '{param}.filters': expected a non-empty list of filters.",
                param=f"{param}.filters",
            )
        parts = [parse_filter(f, f"{param}.filters[{i}]", depth + 1) for i, f in enumerate(items)]
        combine = all if kind == "and" else any
        return lambda attributes: combine(p(attributes) for p in parts)
    if kind not in ("eq", "ne", "in", "nin", *_ORDERED):
        raise InvalidRequestError(
            f"Invalid '{param}.type': {kind!r}; expected eq, ne, gt, gte, lt, lte, in, nin, and or or.",
            param=f"{param}.type",
        )
    key = value.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.key'.", param=f"{param}.key"
        )
    if "value" not in value:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.value'.", param=f"{param}.value"
        )
    target = value["value"]
    if kind in ("in", "nin"):
        if not isinstance(target, list) or not all(isinstance(v, _SCALARS) for v in target):
            raise InvalidRequestError(
                f"Invalid '{param}.value': {kind} takes a list of strings or numbers.",
                param=f"{param}.value",
            )
        members = list(target)
        if kind == "in":
            return lambda a: key in a and any(_same(a[key], v) for v in members)
        return lambda a: key not in a or not any(_same(a[key], v) for v in members)
    if not isinstance(target, _SCALARS):
        raise InvalidRequestError(
            f"Invalid '{param}.value': expected a string, number or boolean.",
            param=f"{param}.value",
        )
    if kind == "eq":
        return lambda a: key in a and _same(a[key], target)
    if kind == "ne":
        return lambda a: key not in a or not _same(a[key], target)
    compare = _ORDERED[kind]
    if isinstance(target, bool):
        raise InvalidRequestError(
            f"Invalid '{param}.value': {kind} compares numbers or strings.", param=f"{param}.value"
        )
    return lambda a: key in a and _comparable(a[key], target) and compare(a[key], target)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind: 1 == 1.0, but True is not 1 and "1" is not 1."""
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def _comparable(a: Any, b: Any) -> bool:
    return (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def check_attributes(value: Any, param: str = "attributes") -> dict[str, Any] | None:
    """OpenAI's limits on file attributes: at most 16 keys of at most 64 characters,
    values strings (at most 512 characters), numbers or booleans."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"Invalid '{param}': expected an object.", param=param)
    if len(value) > 16:
        raise InvalidRequestError(
            f"Invalid '{param}': at most 16 keys, got {len(value)}.", param=param
        )
    for k, v in value.items():
        if len(k) > 64:
            raise InvalidRequestError(
                f"Invalid '{param}': the key {k[:20]!r}... is longer than 64 characters.",
                param=param,
            )
        if isinstance(v, str):
            if len(v) > 512:
                raise InvalidRequestError(
                    f"Invalid '{param}.{k}': longer than 512 characters.", param=f"{param}.{k}"
                )
        elif not isinstance(v, (int, float, bool)):
            raise InvalidRequestError(
                f"Invalid '{param}.{k}': expected a string, number or boolean.",
                param=f"{param}.{k}",
            )
    return dict(value)
