"""Chat JSONL training data: validation with line numbers, and tokenisation for the trainer.

Each line is OpenAI's chat fine-tuning format: `{"messages": [...], "tools": [...]}`, with
messages `{"role": "system"|"user"|"assistant"|"tool", "content": str, "weight": 0|1
(assistant only, optional)}`; function calling as OpenAI's fine-tuning takes it: `tools`
per example (function tools, checked as a request's are: names, a parameters schema
llguidance can enforce), an assistant's `tool_calls` (`[{"id", "type": "function",
"function": {"name", "arguments": JSON text}}]`, content optional beside them) naming
one of the example's tools with arguments that are a JSON object valid under its schema,
and `tool` messages whose `tool_call_id` answers an earlier call.

`read_examples` reports every problem with its line number and a plain reason;
`tokenize_example` renders the conversation as serving does (`ownllm.models.tool_format.
render_conversation`: the model's own chat template, given the tools where it takes them,
else the documented fallback format) and marks the tokens of assistant turns with weight
1 — their content and calls, and the end-of-turn token that closes them — as the only
tokens the loss sees.

Left out: the legacy prompt/completion format, the legacy `functions` / `function_call`
format (a problem naming it), multimodal content parts (content must be a string).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownllm.errors import InvalidRequestError
from ownllm.models.tool_format import check_function_tool, render_conversation

ROLES = ("system", "user", "assistant", "tool")
MIN_EXAMPLES = 10
MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Example:
    line: int
    messages: list[dict]  # as the renderer takes them (calls' arguments parsed), with weights
    tools: list[dict] | None = None  # function tools, as rendered


@dataclass
class TokenizedExample:
    line: int
    input_ids: list[int]
    labels_mask: list[bool]  # True where the loss is taken (predicting this token)
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(self.labels_mask)


@dataclass
class Dataset:
    examples: list[TokenizedExample]
    warnings: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


class DataError(InvalidRequestError):
    """The training or validation file cannot be used; `param` names which one."""


def _check_message(i: int, message: object) -> str | None:
    if not isinstance(message, dict):
        return f"messages[{i}] is not an object"
    role = message.get("role")
    if role == "function" or "function_call" in message:
        return (
            f"messages[{i}] uses the legacy function-calling format; "
            "use 'tools', an assistant's 'tool_calls' and 'tool' messages"
        )
    if role not in ROLES:
        return f"messages[{i}] has unknown role {role!r} (use system, user, assistant or tool)"
    content = message.get("content")
    may_be_empty = role == "assistant" and message.get("tool_calls")
    if not isinstance(content, str) and not (may_be_empty and content is None):
        return f"messages[{i}] ({role}) has no string 'content'"
    if "tool_calls" in message and role != "assistant":
        return f"messages[{i}] ({role}) has tool_calls; only assistant messages make calls"
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        return f"messages[{i}] (tool) has no string 'tool_call_id'"
    if "weight" in message:
        if role != "assistant":
            return f"messages[{i}] ({role}) has a weight; only assistant messages take one"
        if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            return f"messages[{i}] has weight {message['weight']!r}; weight must be 0 or 1"
    return None


def _parse_tools(value: object) -> tuple[list[dict], dict[str, dict]] | str:
    """The example's tools as rendered and each function's parameters schema, or why not."""
    from ownllm.engine.constraints import check_tool_schema

    if not isinstance(value, list) or not value:
        return "'tools' must be a non-empty list of function tools"
    tools, schemas = [], {}
    for i, tool in enumerate(value):
        try:
            function = check_function_tool(tool, f"tools[{i}]")
            where = f"tools[{i}].function.parameters"
            if function["parameters"].get("type", "object") != "object":
                return f'{where} must describe an object ("type": "object"), as arguments are one'
            schema = json.loads(check_tool_schema(function["parameters"], where))
        except InvalidRequestError as e:
            return e.message
        if function["name"] in schemas:
            return f"tools[{i}]: the function name {function['name']!r} is given twice"
        schemas[function["name"]] = schema
        tools.append({"type": "function", "function": function})
    return tools, schemas


def _parse_calls(i: int, calls: object, schemas: dict[str, dict], line: int) -> list[dict] | str:
    """An assistant's tool_calls as the renderer takes them (arguments parsed), or why not."""
    from jsonschema.validators import validator_for

    if not isinstance(calls, list) or not calls:
        return f"messages[{i}].tool_calls must be a non-empty list"
    out = []
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return (
                f"{where} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}"
            )
        if call.get("type", "function") != "function":
            return f"{where}.type must be 'function'"
        call_id = call.get("id", f"call_{line}_{i}_{j}")
        if not isinstance(call_id, str):
            return f"{where}.id must be a string"
        name = function["name"]
        if name not in schemas:
            known = ", ".join(repr(n) for n in schemas) or "none: the example has no 'tools'"
            return f"{where} calls {name!r}, which is not among the example's tools ({known})"
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            return f"{where}.function.arguments must be a string of JSON (as OpenAI sends it)"
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as e:
            return f"{where}.function.arguments is not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(parsed, dict):
            return f"{where}.function.arguments must be a JSON object"
        validator = validator_for(schemas[name])(schemas[name])
        error = next(iter(validator.iter_errors(parsed)), None)
        if error is not None:
            return f"{where}.function.arguments do not match the parameters of {name!r}: {error.message}"
        out.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": parsed}}
        )
    return out


def _render_message(message: dict, calls: list[dict] | None) -> dict:
    """One message as serving hands it to the renderer (`ownllm.api.calls`)."""
    out: dict = {"role": message["role"], "content": message.get("content") or ""}
    if calls is not None:
        out["tool_calls"] = calls
    if message["role"] == "tool":
        out["tool_call_id"] = message["tool_call_id"]
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
    if "weight" in message:
        out["weight"] = message["weight"]
    return out


def json_object(number: int, line: str) -> dict | Problem:
    """The JSON object on line `number`, or the Problem that it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return Problem(number, f"invalid JSON ({e.msg} at column {e.colno})")
    return record if isinstance(record, dict) else Problem(number, "the line is not a JSON object")


def parse_line(number: int, line: str) -> Example | Problem:
    record = json_object(number, line)
    if isinstance(record, Problem):
        return record
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return Problem(number, "missing 'messages' (a non-empty list)")
    if "functions" in record:
        return Problem(
            number, "the legacy 'functions' format is not supported; give 'tools' instead"
        )
    tools, schemas = None, {}
    if record.get("tools") is not None:
        parsed_tools = _parse_tools(record["tools"])
        if isinstance(parsed_tools, str):
            return Problem(number, parsed_tools)
        tools, schemas = parsed_tools
    rendered, call_ids = [], set()
    for i, message in enumerate(messages):
        reason = _check_message(i, message)
        if reason:
            return Problem(number, reason)
        calls = None
        if message.get("tool_calls") is not None:
            calls = _parse_calls(i, message["tool_calls"], schemas, number)
            if isinstance(calls, str):
                return Problem(number, calls)
            call_ids |= {c["id"] for c in calls}
        if message["role"] == "tool" and message["tool_call_id"] not in call_ids:
            return Problem(
                number,
                f"messages[{i}] (tool) answers tool_call_id {message['tool_call_id']!r}, "
                "which no earlier assistant message called",
            )
        rendered.append(_render_message(message, calls))
    if not any(m["role"] == "assistant" for m in rendered):
        return Problem(number, "no assistant message to learn from")
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in rendered):
        return Problem(number, "every assistant message has weight 0: nothing to learn from")
    return Example(number, rendered, tools)


def read_valid_lines(path: str | Path, param: str, parse: Callable[[int, str], Any]) -> list:
    """`parse(number, line)` over a JSONL file's non-blank lines; raise DataError listing
    every line it returned a Problem for, else return what it parsed."""
    parsed_lines: list = []
    problems: list[Problem] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parsed = parse(number, line)
                (problems if isinstance(parsed, Problem) else parsed_lines).append(parsed)
    except UnicodeDecodeError:
        raise DataError(
            f"The {param} is not UTF-8 text.", param=param, code="invalid_file_format"
        ) from None
    if problems:
        shown = "; ".join(str(p) for p in problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        suffix = f"; and {more} more" if more > 0 else ""
        raise DataError(
            f"The {param} has {len(problems)} invalid line(s): {shown}{suffix}.",
            param=param,
            code="invalid_file_format",
        )
    return parsed_lines


def read_examples(path: str | Path, param: str = "training_file") -> list[Example]:
    """Parse and validate a JSONL file; raise DataError listing every problem with its line."""
    examples: list[Example] = read_valid_lines(path, param, parse_line)
    return enough(examples, param, "example(s)", "examples")


def enough(items: list, param: str, counted: str, plural: str) -> list:
    """`items`, or DataError when a training file has fewer than MIN_EXAMPLES or any file none
    (`counted` and `plural` name them in the message: "example(s)", "examples")."""
    if param == "training_file" and len(items) < MIN_EXAMPLES:
        raise DataError(
            f"The training file has {len(items)} {counted}; at least {MIN_EXAMPLES} are needed.",
            param=param,
            code="invalid_n_examples",
        )
    if not items:
        raise DataError(f"The {param} has no {plural}.", param=param, code="invalid_n_examples")
    return items


def _assistant_spans(
    tokenizer, messages: list[dict], tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trained assistant turns.

    A turn's span is what the template adds after the generation prompt for it:
    the content and calls and the end-of-turn marker, exactly what serving generates.
    """
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]

    def render(upto: list[dict], add_generation_prompt: bool) -> str:
        return render_conversation(tokenizer, upto, tools, add_generation_prompt)

    text = render(clean, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render(clean[:i], True)
        upto = render(clean[: i + 1], False)
        if not text.startswith(upto) or not upto.startswith(prompt):
            raise DataError(
                "The model's chat template does not render conversations incrementally, "
                "so assistant turns cannot be located.",
                param="model",
            )
        spans.append((len(prompt), len(upto)))
    return text, spans


def tokenize_example(tokenizer, example: Example, max_len: int) -> TokenizedExample:
    """Token ids as `Tokenizer.encode_chat` gives them, with the assistant-token mask."""
    text, spans = _assistant_spans(tokenizer, example.messages, example.tools)
    ids, starts = tokenizer.encode_rendered(text)
    trained = [any(s <= start < e for s, e in spans) for start in starts]
    bos = tokenizer.bos_token_id
    if tokenizer.add_bos_token and bos is not None and (not ids or ids[0] != bos):
        ids, trained = [bos, *ids], [False, *trained]
    truncated = len(ids) > max_len
    ids, trained = ids[:max_len], trained[:max_len]
    return TokenizedExample(example.line, ids, trained, truncated)


def tokenize(
    tokenizer, examples: Iterable[Example], max_len: int, param: str = "training_file"
) -> Dataset:
    out, warnings = [], []
    for example in examples:
        tokenized = tokenize_example(tokenizer, example, max_len)
        if tokenized.truncated:
            warnings.append(f"{param} line {example.line}: longer than {max_len} tokens, truncated")
        if tokenized.num_trained == 0:
            warnings.append(f"{param} line {example.line}: no assistant tokens left, skipped")
            continue
        out.append(tokenized)
    if not out:
        raise DataError(
            f"The {param} has no usable examples.", param=param, code="invalid_n_examples"
        )
    return Dataset(out, warnings)
