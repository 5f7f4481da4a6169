"""A batch input file, read and checked: JSONL, one `{custom_id, method, url, body}` a line.

Every problem names its line (1-based) and a code, as OpenAI's `errors.data[]` does:
`invalid_json_line`, `missing_required_parameter`, `invalid_method`, `invalid_url`,
`mismatched_endpoint`, `invalid_body`, `duplicate_custom_id`, `too_many_lines`,
`empty_file`. The body is checked by `check_body(url, body)`, which the api layer passes
in (its request schemas): a line the endpoint would refuse fails the batch before any
line runs. At most `MAX_ERRORS` are reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_ERRORS = 100
MAX_CUSTOM_ID_CHARS = 512

# (url, body) -> None when the endpoint accepts the body, else (message, param)
BodyCheck = Callable[[str, dict], "tuple[str, str | None] | None"]


@dataclass(frozen=True)
class InputLine:
    line: int  # 1-based
    custom_id: str
    body: dict


@dataclass(frozen=True)
class InputError:
    line: int | None
    code: str
    message: str
    param: str | None = None

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


class InputErrors(Exception):
    """The input file cannot run: its errors, in line order."""

    def __init__(self, errors: list[InputError]) -> None:
        super().__init__(errors[0].message)
        self.errors = errors


def read_lines(
    raw_lines: Iterable[bytes],
    endpoint: str,
    check_body: BodyCheck,
    max_lines: int,
    endpoints: tuple[str, ...] = ENDPOINTS,
) -> list[InputLine]:
    """The lines of an input file (its bytes split at newlines); InputErrors when any line
    is wrong. Blank lines are skipped but counted, so line numbers match an editor's.
    `endpoints`: the urls this server answers in a batch."""
    lines: list[InputLine] = []
    errors: list[InputError] = []
    seen: set[str] = set()
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        if len(lines) + len(errors) >= max_lines:
            errors.append(
                InputError(
                    number,
                    "too_many_lines",
                    f"The batch has more than {max_lines:,} requests (setting "
                    "batch.max_lines). Split it into several batches.",
                )
            )
            break
        result = _read_line(number, raw, endpoint, endpoints, check_body, seen)
        if isinstance(result, InputError):
            errors.append(result)
            if len(errors) >= MAX_ERRORS:
                break
        else:
            lines.append(result)
    if not errors and not lines:
        errors.append(InputError(None, "empty_file", "The input file has no requests."))
    if errors:
        raise InputErrors(errors)
    return lines


def _read_line(
    number: int,
    raw: bytes,
    endpoint: str,
    endpoints: tuple[str, ...],
    check_body: BodyCheck,
    seen: set[str],
) -> InputLine | InputError:
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return InputError(number, "invalid_json_line", f"Line {number} is not valid JSON.")
    if not isinstance(item, dict):
        return InputError(number, "invalid_json_line", f"Line {number} is not a JSON object.")
    for name in ("custom_id", "method", "url", "body"):
        if name not in item:
            return InputError(
                number,
                "missing_required_parameter",
                f"Line {number} is missing required parameter '{name}'.",
                name,
            )
    custom_id, method, url, body = item["custom_id"], item["method"], item["url"], item["body"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return InputError(
            number,
            "invalid_custom_id",
            f"Line {number}: 'custom_id' must be a non-empty string of at most "
            f"{MAX_CUSTOM_ID_CHARS} characters.",
            "custom_id",
        )
    if method != "POST":
        return InputError(
            number,
            "invalid_method",
            f"Line {number}: method {method!r} is not supported; use 'POST'.",
            "method",
        )
    if url not in endpoints:
        return InputError(
            number,
            "invalid_url",
            f"Line {number}: url {url!r} is not an endpoint a batch can call "
            f"(one of {', '.join(endpoints)}).",
            "url",
        )
    if url != endpoint:
        return InputError(
            number,
            "mismatched_endpoint",
            f"Line {number}: url {url!r} does not match the batch's endpoint {endpoint!r}.",
            "url",
        )
    if not isinstance(body, dict):
        return InputError(
            number, "invalid_body", f"Line {number}: 'body' must be a JSON object.", "body"
        )
    if body.get("stream"):
        return InputError(
            number,
            "invalid_body",
            f"Line {number}: 'stream' is not supported in a batch.",
            "body.stream",
        )
    problem = check_body(url, body)
    if problem is not None:
        message, param = problem
        return InputError(
            number,
            "invalid_body",
            f"Line {number}: {message}",
            f"body.{param}" if param else "body",
        )
    if custom_id in seen:
        return InputError(
            number,
            "duplicate_custom_id",
            f"Line {number}: custom_id {custom_id!r} is used by an earlier line; each must "
            "be unique in the batch.",
            "custom_id",
        )
    seen.add(custom_id)
    return InputLine(number, custom_id, body)
