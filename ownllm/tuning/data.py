"""Chat JSONL training data: validation with line numbers, and tokenisation for the trainer.

Each line is `{"messages": [{"role": "system"|"user"|"assistant", "content": str,
"weight": 0|1 (assistant only, optional)}]}` — OpenAI's chat fine-tuning format.
`validate_lines` reports every problem with its line number and a plain reason;
`tokenize_example` renders the conversation with the model's own chat template
(`Tokenizer.render_chat`, the one serving uses) and marks the tokens of
assistant turns with weight 1 — their content and the end-of-turn token that
closes them — as the only tokens the loss sees.

Left out: the legacy prompt/completion format, tool calls and function messages,
multimodal content parts (content must be a string).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ownllm.errors import InvalidRequestError

ROLES = ("system", "user", "assistant")
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
    messages: list[dict]


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
    if role not in ROLES:
        return f"messages[{i}] has unknown role {role!r} (use system, user or assistant)"
    if not isinstance(message.get("content"), str):
        return f"messages[{i}] ({role}) has no string 'content'"
    if "weight" in message:
        if role != "assistant":
            return f"messages[{i}] ({role}) has a weight; only assistant messages take one"
        if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            return f"messages[{i}] has weight {message['weight']!r}; weight must be 0 or 1"
    return None


def parse_line(number: int, line: str) -> Example | Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return Problem(number, f"invalid JSON ({e.msg} at column {e.colno})")
    if not isinstance(record, dict):
        return Problem(number, "the line is not a JSON object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return Problem(number, "missing 'messages' (a non-empty list)")
    for i, message in enumerate(messages):
        reason = _check_message(i, message)
        if reason:
            return Problem(number, reason)
    if not any(m["role"] == "assistant" for m in messages):
        return Problem(number, "no assistant message to learn from")
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        return Problem(number, "every assistant message has weight 0: nothing to learn from")
    return Example(number, messages)


def read_examples(path: str | Path, param: str = "training_file") -> list[Example]:
    """Parse and validate a JSONL file; raise DataError listing every problem with its line."""
    examples: list[Example] = []
    problems: list[Problem] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parsed = parse_line(number, line)
                (problems if isinstance(parsed, Problem) else examples).append(parsed)
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
    if param == "training_file" and len(examples) < MIN_EXAMPLES:
        raise DataError(
            f"The training file has {len(examples)} example(s); at least {MIN_EXAMPLES} are needed.",
            param=param,
            code="invalid_n_examples",
        )
    if not examples:
        raise DataError(f"The {param} has no examples.", param=param, code="invalid_n_examples")
    return examples


def _assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trained assistant turns.

    A turn's span is what the template adds after the generation prompt for it:
    the content and the end-of-turn marker, exactly what serving generates.
    """
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.render_chat(clean, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = tokenizer.render_chat(clean[:i], add_generation_prompt=True)
        upto = tokenizer.render_chat(clean[: i + 1], add_generation_prompt=False)
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
    text, spans = _assistant_spans(tokenizer, example.messages)
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
