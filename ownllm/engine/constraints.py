"""JSON-constrained decoding (OpenAI `response_format`) with llguidance.

`JsonConstraint` implements `ownllm.engine.messages.TokenConstraint`: before each token the
engine asks it for the allowed tokens (`fill_bitmask`), after sampling it reports the token
(`accept_token`). Allowed tokens are exactly those that keep the text a prefix of a JSON
document valid under the schema, so a choice that ends by the constraint (`is_terminated()`
turns True, or EOS where the grammar accepts) parses and validates. A choice cut by
`max_tokens` is, as with OpenAI, incomplete.

    constraint = constraint_for_response_format(tokenizer, request.response_format, vocab_size)
    constraint.fill_bitmask(bitmask, row)   # int32 [B, ceil(vocab_size / 32)], CPU
    constraint.accept_token(token_id)
    constraint.is_terminated()              # True: the JSON is complete; finish with "stop"

JSON is generated compact (no whitespace between tokens): free whitespace lets a small model
loop on newlines until max_tokens. Schema keywords llguidance cannot enforce (e.g.
`dependentSchemas`) are rejected with `InvalidRequestError(param="response_format")` rather
than silently ignored, as are schemas that are not valid JSON Schema. A schema deeper than
`MAX_SCHEMA_DEPTH` or larger than `MAX_SCHEMA_CHARS` is refused (param
`response_format.json_schema`) before anything walks it recursively.

The llguidance tokenizer (~0.2 s to build for a 50k vocabulary) is cached per tokenizer.

Left out: grammars other than JSON (regex, Lark, tool-call structural tags), fast-forward
tokens, rollback for speculative decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from ownllm.errors import InvalidRequestError

PARAM = "response_format"
SCHEMA_PARAM = "response_format.json_schema"
JSON_OPTIONS = {"whitespace_flexible": False}
# Nested objects and arrays. OpenAI's structured outputs allow 10 levels of object nesting,
# each 2 to 4 levels here (`properties`, `anyOf` lists), so 64 admits what OpenAI accepts
# while jsonschema's recursive check (about 5 frames a level) stays far from the ~200 levels
# where it exhausts Python's stack.
MAX_SCHEMA_DEPTH = 64
# Compact JSON characters. Real schemas are a few KB; checking one costs about 60 us a
# character, so the bound caps the check near a second.
MAX_SCHEMA_CHARS = 64 * 1024


class JsonConstraint:
    """Constrains one choice to a JSON object (`json_object`) or a JSON schema (`from_schema`)."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher  # llguidance.LLMatcher

    @classmethod
    def json_object(cls, tokenizer: Any, vocab_size: int | None = None) -> JsonConstraint:
        """Any JSON object (OpenAI `{"type": "json_object"}`)."""
        return cls.from_schema(tokenizer, {"type": "object"}, vocab_size)

    @classmethod
    def from_schema(
        cls, tokenizer: Any, schema: dict, vocab_size: int | None = None
    ) -> JsonConstraint:
        """A JSON document valid under `schema`. `vocab_size`: the model's logits width
        (default: the tokenizer's vocabulary); bitmasks must be [B, ceil(vocab_size / 32)]."""

        return cls.from_grammar(tokenizer, _grammar(_schema_text(schema)), vocab_size)

    @classmethod
    def from_grammar(
        cls, tokenizer: Any, grammar: str, vocab_size: int | None = None, param: str = PARAM
    ) -> JsonConstraint:
        """Text valid under an llguidance grammar (Lark, or one from a JSON schema)."""
        import llguidance

        lltokenizer = _lltokenizer(tokenizer, vocab_size)
        matcher = llguidance.LLMatcher(lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(
                f"this grammar cannot be enforced: {matcher.get_error()}", param=param
            )
        return cls(matcher)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        """Advance by the sampled token; False when the token was not allowed."""
        return self._matcher.consume_token(int(token_id))

    def is_terminated(self) -> bool:
        """The document is complete (only EOS may follow), or the constraint failed."""
        return self._matcher.is_stopped()

    def is_accepting(self) -> bool:
        """The text so far is a complete valid document (EOS may end it here)."""
        return self._matcher.is_accepting()

    def error(self) -> str:
        """Why the constraint failed ("" when it has not)."""
        return self._matcher.get_error()

    def fork(self) -> JsonConstraint:
        return JsonConstraint(self._matcher.deep_copy())


def constraint_for_response_format(
    tokenizer: Any, response_format: dict | None, vocab_size: int | None = None
) -> JsonConstraint | None:
    """The constraint for an OpenAI `response_format` dict; None for text or no format."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonConstraint.json_object(tokenizer, vocab_size)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            schema = {}
        if not isinstance(schema, dict):
            raise InvalidRequestError("json_schema.schema must be an object", param=PARAM)
        return JsonConstraint.from_schema(tokenizer, schema, vocab_size)
    raise InvalidRequestError(
        f"unknown response_format type {kind!r}: use text, json_object or json_schema",
        param=PARAM,
    )


def _schema_text(schema: dict, param: str = PARAM, bounds_param: str = SCHEMA_PARAM) -> str:
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        raise InvalidRequestError("a JSON schema must be an object", param=param)
    check_schema_bounds(schema, bounds_param)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise InvalidRequestError(f"invalid JSON schema: {e.message}", param=param) from None
    except RecursionError:  # the bounds keep it out of reach; never a 500 if not
        message = "the JSON schema is nested too deeply"
        raise InvalidRequestError(message, param=bounds_param) from None
    try:
        return json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidRequestError(f"invalid JSON schema: {e}", param=param) from None


def check_schema_bounds(schema: Any, param: str = SCHEMA_PARAM) -> None:
    """Raise a 400 on `param` when `schema` nests deeper than MAX_SCHEMA_DEPTH or its
    compact JSON would pass MAX_SCHEMA_CHARS.

    Walks with an explicit stack and stops at the first bound passed, so any input is cheap.
    """
    num_chars = 0
    stack = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_SCHEMA_DEPTH:
                raise InvalidRequestError(
                    f"the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels",
                    param=param,
                )
            num_chars += 2 + max(len(value) - 1, 0)  # brackets and commas
            if isinstance(value, dict):
                num_chars += sum(len(str(k)) + 3 for k in value)  # "key":
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
        else:
            num_chars += len(value) + 2 if isinstance(value, str) else len(repr(value))
        if num_chars > MAX_SCHEMA_CHARS:
            raise InvalidRequestError(
                f"the JSON schema is longer than {MAX_SCHEMA_CHARS} characters of JSON",
                param=param,
            )


def _grammar(schema_text: str, param: str = PARAM) -> str:
    try:
        return _cached_grammar(schema_text)
    except _GrammarError as e:
        raise InvalidRequestError(str(e), param=param) from None


class _GrammarError(ValueError):
    pass


@lru_cache(maxsize=256)
def _cached_grammar(schema_text: str) -> str:
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text, overrides=JSON_OPTIONS)
    except (ValueError, RecursionError) as e:
        raise _GrammarError(f"invalid JSON schema: {e}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise _GrammarError(f"this JSON schema cannot be enforced: {messages[0]}")
    return grammar


def _lltokenizer(tokenizer: Any, vocab_size: int | None) -> Any:
    hf = getattr(tokenizer, "hf", tokenizer)
    eos = tuple(getattr(tokenizer, "eos_token_ids", ()) or ())
    return _cached_lltokenizer(hf, vocab_size, eos)


@lru_cache(maxsize=8)
def _cached_lltokenizer(hf: Any, vocab_size: int | None, eos_token_ids: tuple[int, ...]) -> Any:
    import llguidance

    return llguidance.LLTokenizer(
        hf.to_str(), n_vocab=vocab_size, eos_token=list(eos_token_ids) or None
    )


# -- tool calls -------------------------------------------------------------------------------

TOOLS_PARAM = "tools"


@dataclass(frozen=True)
class ToolCallSpec:
    """What a tool-call constraint allows: the functions (name, parameters schema), the
    tool_choice mode ("none", "auto", "required"; a named function is "required" over that
    one tool), whether several calls may follow each other, and how the model writes a
    call (`ownllm.models.tool_format.CallSyntax`: open, close, arguments key, separator).
    """

    functions: tuple[tuple[str, str], ...]  # (name, parameters schema as JSON text)
    mode: str = "auto"
    is_parallel: bool = True
    open: str = "<tool_call>"
    close: str = "</tool_call>"
    arguments_key: str = "arguments"
    separator: str = "\n"


def check_tool_schema(schema: Any, param: str) -> str:
    """The parameters schema of one tool as JSON text, checked as `response_format` schemas
    are (valid JSON Schema, within the bounds, enforceable by llguidance); a 400 on
    `param` (e.g. `tools[1].function.parameters`) if not."""
    text = _schema_text(schema, param, param)
    _grammar(text, param)
    return text


def tool_call_grammar(spec: ToolCallSpec) -> str:
    """The Lark grammar of an answer under `spec`.

    - required: one call, or several separated by `separator` when parallel;
    - auto: free text, or text then calls: once the text opens a call (`open`, a lazy
      trigger), the call is forced to name a function and give arguments valid under its
      schema, then `close`; text after a call only when parallel (more calls may follow);
    - none: free text that never opens a call.
    A call is `{"name": <one of the functions>, "<arguments_key>": {...}}`, compact JSON,
    name first.
    """
    text = "TEXT: /(?s:.*)/ & ~/(?s:.*)" + _regex_escape(spec.open) + "(?s:.*)/"
    if spec.mode == "none":
        return "%llguidance {}\nstart: TEXT\n" + text + "\n"
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, spec.arguments_key: json.loads(schema)},
            "required": ["name", spec.arguments_key],
            "additionalProperties": False,
        }
        for name, schema in spec.functions
    ]
    call_schema = {"anyOf": options} if len(options) > 1 else options[0]
    call_schema["x-guidance"] = JSON_OPTIONS
    body = "%json " + json.dumps(call_schema)
    json_open = spec.open.startswith("{")  # Llama 3: the opening is the JSON object's own
    head = "" if json_open else json.dumps(spec.open) + " "
    tail = " " + json.dumps(spec.close) if spec.close else ""
    sep = json.dumps(spec.separator) + " " if spec.separator else ""
    lines = ["%llguidance {}"]
    if spec.mode == "required":
        lines.append("start: call (" + sep + "call)*" if spec.is_parallel else "start: call")
        lines.append(f"call: {head}{body}{tail}")
    else:
        if json_open:
            lines.append("start: FREE | call")
            lines.append(f"call: {body}")
            lines.append("FREE: /[^{](?s:.*)/")
            return "\n".join(lines) + "\n"
        # the lazy head ends at the first `open`: from there the call is forced
        lines.append("start: call* TEXT" if spec.is_parallel else "start: TEXT | call")
        lines.append(f"head[lazy]: TEXT {json.dumps(spec.open)}")
        lines.append(f"call: head {body}{tail}")
    lines.append(text)
    return "\n".join(lines) + "\n"


def constraint_for_tools(
    tokenizer: Any, spec: ToolCallSpec, vocab_size: int | None = None
) -> JsonConstraint:
    """The constraint of an answer with tools (see `tool_call_grammar`)."""
    return JsonConstraint.from_grammar(
        tokenizer, tool_call_grammar(spec), vocab_size, param=TOOLS_PARAM
    )


def _regex_escape(text: str) -> str:
    """`text` as a literal inside an llguidance /regex/: letters and digits as they are,
    every other character as a `\\x{..}` escape (no slash, newline or metacharacter left)."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)
