"""Preference JSONL for DPO: validation with line numbers, and tokenisation into pairs.

Each line is OpenAI's preference fine-tuning format:

    {"input": {"messages": [...], "tools": [...]},
     "preferred_output": [{"role": "assistant", "content": str}],
     "non_preferred_output": [{"role": "assistant", "content": str}]}

`input.messages` are chat messages (system, user, assistant; the last one is the
user's); `input.tools` (optional) are function tools, checked and rendered into the
prompt as serving renders them (`ownllm.models.tool_format`). Both outputs are one
assistant message. A pair tokenises into two chat examples sharing the prompt
(`ownllm.tuning.data.tokenize_example`), each with the mask of its answer tokens
(the content and the end-of-turn token).

Left out: tool calls as outputs, multimodal content parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ownllm.errors import InvalidRequestError
from ownllm.models.tool_format import check_function_tool
from ownllm.tuning.data import (
    DataError,
    Example,
    Problem,
    TokenizedExample,
    enough,
    json_object,
    read_valid_lines,
    tokenize_example,
)

INPUT_ROLES = ("system", "user", "assistant")


@dataclass
class PreferencePair:
    line: int
    messages: list[dict]
    tools: list[dict] | None
    preferred: str
    non_preferred: str


@dataclass
class TokenizedPair:
    line: int
    preferred: TokenizedExample
    non_preferred: TokenizedExample

    @property
    def num_tokens(self) -> int:
        return len(self.preferred.input_ids) + len(self.non_preferred.input_ids)


@dataclass
class PreferenceDataset:
    pairs: list[TokenizedPair]
    warnings: list[str] = field(default_factory=list)

    @property
    def examples(self) -> list[TokenizedPair]:  # what the trainer iterates
        return self.pairs

    @property
    def num_tokens(self) -> int:
        return sum(p.num_tokens for p in self.pairs)


def _output(record: dict, key: str) -> str | None:
    """The content of a one-message assistant output, or None when it is malformed."""
    value = record.get(key)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        return None
    message = value[0]
    if message.get("role", "assistant") != "assistant":
        return None
    content = message.get("content")
    return content if isinstance(content, str) and content.strip() else None


def _tools(tools: object) -> list[dict] | str | None:
    """The tools as rendered, or the reason they cannot be."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        return "'input.tools' is not a list"
    try:
        return [
            {"type": "function", "function": check_function_tool(t, f"input.tools[{i}]")}
            for i, t in enumerate(tools)
        ]
    except InvalidRequestError as e:
        return e.message


def parse_pair(number: int, line: str) -> PreferencePair | Problem:
    record = json_object(number, line)
    if isinstance(record, Problem):
        return record
    if "messages" in record and "input" not in record:
        return Problem(number, "a chat example where a preference pair is expected "
                       "(use input, preferred_output, non_preferred_output for method dpo)")  # fmt: skip
    inp = record.get("input")
    messages = inp.get("messages") if isinstance(inp, dict) else None
    if not isinstance(messages, list) or not messages:
        return Problem(number, "missing 'input.messages' (a non-empty list)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in INPUT_ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            return Problem(number, f"input.messages[{i}] has unknown role {role!r} "
                           "(use system, user or assistant)")  # fmt: skip
        if not isinstance(m.get("content"), str):
            return Problem(number, f"input.messages[{i}] ({m['role']}) has no string 'content'")
    if messages[-1]["role"] != "user":
        return Problem(number, "the last of 'input.messages' must be the user's")
    tools = _tools(inp.get("tools"))
    if isinstance(tools, str):
        return Problem(number, tools)
    preferred = _output(record, "preferred_output")
    if preferred is None:
        return Problem(number, "'preferred_output' must be one assistant message with content")
    non_preferred = _output(record, "non_preferred_output")
    if non_preferred is None:
        return Problem(number, "'non_preferred_output' must be one assistant message with content")
    if preferred == non_preferred:
        return Problem(number, "'preferred_output' and 'non_preferred_output' are the same")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return PreferencePair(number, clean, tools, preferred, non_preferred)


def read_pairs(path: str | Path, param: str = "training_file") -> list[PreferencePair]:
    """Parse and validate a preference JSONL file; raise DataError naming every bad line."""
    pairs: list[PreferencePair] = read_valid_lines(path, param, parse_pair)
    return enough(pairs, param, "preference pair(s)", "pairs")


def _answer(tokenizer, pair: PreferencePair, answer: str, max_len: int) -> TokenizedExample:
    messages = [*pair.messages, {"role": "assistant", "content": answer}]
    return tokenize_example(tokenizer, Example(pair.line, messages, pair.tools), max_len)


def tokenize_pairs(
    tokenizer, pairs: list[PreferencePair], max_len: int, param: str = "training_file"
) -> PreferenceDataset:
    out, warnings = [], []
    for pair in pairs:
        good = _answer(tokenizer, pair, pair.preferred, max_len)
        bad = _answer(tokenizer, pair, pair.non_preferred, max_len)
        if good.truncated or bad.truncated:
            warnings.append(f"{param} line {pair.line}: longer than {max_len} tokens, truncated")
        if good.num_trained == 0 or bad.num_trained == 0:
            warnings.append(f"{param} line {pair.line}: no answer tokens left, skipped")
            continue
        out.append(TokenizedPair(pair.line, good, bad))
    if not out:
        raise DataError(f"The {param} has no usable pairs.", param=param, code="invalid_n_examples")
    return PreferenceDataset(out, warnings)
