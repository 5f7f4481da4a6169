"""How a model sees tools and writes tool calls: one renderer for serving and training.

Messages here are OpenAI chat messages as plain dicts, with an assistant's `tool_calls`
(`[{"id", "type": "function", "function": {"name", "arguments": dict}}]`, arguments
parsed) and `tool` messages (`tool_call_id`, `content`). Tools are OpenAI function tools
(`[{"type": "function", "function": {"name", "description", "parameters"}}]`).

`render_conversation(tokenizer, messages, tools)` is the prompt text:

- A model whose chat template takes `tools` (Qwen2.5, Llama 3.x, Mistral, Hermes) is
  rendered by its own template, given `tools` and the messages as transformers passes
  them, so a tool-trained model sees exactly what it was trained on.
- Any other model (the shipped SmolLM2 among them) gets the fallback format: a system
  block listing the tools as JSON schemas (appended to the conversation's own system
  message, or a new one first), assistant calls written as
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one per line, and each tool
  result as a user turn `<tool_response>{"tool_call_id": ..., "content": ...}
  </tool_response>`.

`call_syntax(tokenizer)` says how the model writes a call: the text that opens and
closes it and the key of the arguments. The constraint (`ownllm.engine.constraints.
tool_call_grammar`) and the parser (`ToolCallParser`) both read it.

Left out: Mistral's `[TOOL_CALLS]` list syntax for generation (Mistral templates render,
but their calls parse and constrain only in the `<tool_call>` and Llama 3 JSON syntaxes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ownllm.errors import InvalidRequestError

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
FALLBACK_INSTRUCTIONS = (
    "You can call functions. Their JSON schemas are listed between <tools> and </tools>:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one line per call, exactly in this form:\n"
    '<tool_call>{{"name": "<function name>", "arguments": <arguments as a JSON '
    "object>}}</tool_call>\n"
    "Function results come back between <tool_response> and </tool_response>."
)


@dataclass(frozen=True)
class CallSyntax:
    """How calls are written: `open` + {"name": ..., <arguments_key>: {...}} + `close`,
    several separated by `separator`."""

    open: str = "<tool_call>"
    close: str = "</tool_call>"
    arguments_key: str = "arguments"
    separator: str = "\n"


FALLBACK_SYNTAX = CallSyntax()
HERMES_SYNTAX = CallSyntax(open="<tool_call>\n", close="\n</tool_call>")  # Qwen2.5, Hermes
LLAMA3_SYNTAX = CallSyntax(open='{"name": ', close="", arguments_key="parameters")


@dataclass(frozen=True)
class ToolRequest:
    """The tools of one request, checked: what the model is shown and what it may call."""

    tools: list[dict[str, Any]]  # [{"type": "function", "function": {...}}], as rendered
    schemas: dict[str, str]  # name -> parameters schema (JSON text), in the tools' order
    mode: str = "auto"  # "none" | "auto" | "required"
    forced_name: str | None = None  # tool_choice naming one function
    is_parallel: bool = True

    @property
    def callable_functions(self) -> tuple[tuple[str, str], ...]:
        if self.forced_name is not None:
            return ((self.forced_name, self.schemas[self.forced_name]),)
        return tuple(self.schemas.items())


def check_function_tool(tool: Any, where: str) -> dict[str, Any]:
    """One OpenAI function tool checked (an `InvalidRequestError` naming the field under
    `where`, e.g. `tools[1].function.name`, if not) and as it is rendered: name, description,
    parameters (an empty object's schema when left out), strict. Serving (`ownllm.api.tools`)
    and training (`ownllm.tuning.data`) both take tools through here. The parameters
    schema itself is checked by `ownllm.engine.constraints.check_tool_schema`."""
    if not isinstance(tool, dict):
        raise InvalidRequestError(f"{where} must be an object", param=where)
    if tool.get("type") != "function":
        raise InvalidRequestError(
            f"{where}.type must be 'function': ownllm serves function tools "
            f"(got {tool.get('type')!r})",
            param=f"{where}.type",
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidRequestError(f"{where}.function is required", param=f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRequestError(
            f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-' (got {name!r})",
            param=f"{where}.function.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(
            f"{where}.function.description must be a string",
            param=f"{where}.function.description",
        )
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequestError(
            f"{where}.function.strict must be a boolean", param=f"{where}.function.strict"
        )
    parameters = function.get("parameters")
    if parameters is None:
        parameters = EMPTY_PARAMETERS
    out: dict[str, Any] = {"name": name}
    if description is not None:
        out["description"] = description
    out["parameters"] = parameters
    if strict is not None:
        out["strict"] = strict
    return out


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the model's chat template reads a `tools` variable."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and _reads_tools(template)


@lru_cache(maxsize=16)
def _reads_tools(template: str) -> bool:
    from jinja2 import Environment, meta
    from jinja2.exceptions import TemplateError

    try:
        names = meta.find_undeclared_variables(Environment().parse(template))
    except TemplateError:
        return False
    return "tools" in names


def call_syntax(tokenizer: Any) -> CallSyntax:
    """The call syntax of this model: its template's, or the fallback's."""
    if not template_takes_tools(tokenizer):
        return FALLBACK_SYNTAX
    template = tokenizer.chat_template
    if "<tool_call>" in template:
        return HERMES_SYNTAX
    if '"parameters"' in template or "parameters" in template and "ipython" in template:
        return LLAMA3_SYNTAX
    return FALLBACK_SYNTAX


def render_conversation(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text of a conversation with tools, as serving and training both see it."""
    has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not tools and not has_tool_turns:
        plain = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
        return tokenizer.render_chat(plain, add_generation_prompt=add_generation_prompt)
    if template_takes_tools(tokenizer):
        native = [_native_message(m) for m in messages]
        kwargs = {"tools": tools} if tools else {}
        return tokenizer.render_chat(native, add_generation_prompt=add_generation_prompt, **kwargs)
    return tokenizer.render_chat(
        fallback_messages(messages, tools), add_generation_prompt=add_generation_prompt
    )


def fallback_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, str]]:
    """The conversation in the fallback format, as plain role/content messages."""
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            body = {"tool_call_id": m.get("tool_call_id", ""), "content": content}
            out.append({"role": "user", "content": f"<tool_response>{_json(body)}</tool_response>"})
            continue
        if m.get("tool_calls"):
            calls = "\n".join(format_call(c["function"], FALLBACK_SYNTAX) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": role, "content": content})
    if tools:
        block = FALLBACK_INSTRUCTIONS.format(tools="\n".join(_json(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def format_call(function: dict[str, Any], syntax: CallSyntax) -> str:
    """One call as the model writes it: compact JSON, name first."""
    arguments = function.get("arguments") or {}
    if syntax is LLAMA3_SYNTAX:
        return syntax.open + _json(function["name"]) + ', "parameters": ' + _json(arguments) + "}"
    body = {"name": function["name"], syntax.arguments_key: arguments}
    return syntax.open + _json(body) + syntax.close


def _native_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as transformers hands it to a chat template (arguments as dicts)."""
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c.get("id", ""), "type": "function", "function": dict(c["function"])}
            for c in m["tool_calls"]
        ]
    if m["role"] == "tool":
        out["tool_call_id"] = m.get("tool_call_id", "")
        if m.get("name"):
            out["name"] = m["name"]
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- reading calls back -----------------------------------------------------------------------


@dataclass
class CallEvent:
    """What `ToolCallParser` found: content text, a call opened (`text` is its name), or
    a fragment of a call's arguments (JSON text)."""

    kind: str  # "content" | "open" | "arguments"
    text: str = ""
    index: int = 0  # the call's index among this choice's calls


_HEAD_RE = re.compile(
    r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)


class ToolCallParser:
    """Splits one choice's text, as it streams, into content and tool calls.

    Content passes through, except a tail that may be the start of `syntax.open`, held
    back until it is decided. Inside a call, the name is sent once it is known, then the
    arguments JSON in fragments; the text from the last `}` on is held back, since it may
    be the call's own closing brace. A call the text leaves unfinished turns back into
    content at `finish`. `calls` holds each call read so far: {"name", "arguments"}.
    """

    def __init__(self, syntax: CallSyntax) -> None:
        self.syntax = syntax
        self.calls: list[dict[str, str]] = []
        self._pending = ""  # text not yet classified
        self._call_text = ""  # the open call's text since `open`, for an unfinished call
        self._in_call = False
        self._body: str | None = None  # the open call's text after its name; None: no name yet

    def feed(self, text: str) -> list[CallEvent]:
        self._pending += text
        events: list[CallEvent] = []
        progress = True
        while progress:
            progress = self._scan_call(events) if self._in_call else self._scan_content(events)
        return events

    def finish(self) -> list[CallEvent]:
        """The choice ended: the held-back text, as the last events. A call cut short (by
        `max_tokens`) keeps the arguments it has, as OpenAI's calls cut by length do; text
        that opened a call but never named a function is content after all."""
        events: list[CallEvent] = []
        if self._in_call and self._body is not None:
            body = self._body + self._pending
            if body.rstrip().endswith("}") and not self.syntax.close:
                body = body.rstrip()[:-1]  # a call without closing text ends with the choice
            self._body = body
            self._send_arguments(len(body), events)
        elif self._in_call:
            events.append(CallEvent("content", self._call_text + self._pending))
        elif self._pending:
            events.append(CallEvent("content", self._pending))
        self._pending, self._in_call, self._body = "", False, None
        return events

    def _scan_content(self, events: list[CallEvent]) -> bool:
        opening = self.syntax.open
        at = self._pending.find(opening)
        if at < 0:
            send = self._pending[: len(self._pending) - _partial_suffix(self._pending, opening)]
            if send:
                events.append(CallEvent("content", send))
                self._pending = self._pending[len(send) :]
            return False
        if at:
            events.append(CallEvent("content", self._pending[:at]))
        self._pending = self._pending[at + len(opening) :]
        self._in_call, self._body, self._call_text = True, None, opening
        if self.syntax is LLAMA3_SYNTAX:  # the opening text is the start of the call's JSON
            self._pending = opening + self._pending
            self._call_text = ""
        return True

    def _scan_call(self, events: list[CallEvent]) -> bool:
        if self._body is None:
            match = _HEAD_RE.match(self._pending)
            if match is None or match.end() == len(self._pending):  # whitespace may follow
                return False
            name = json.loads(match.group(1))
            self.calls.append({"name": name, "arguments": ""})
            events.append(CallEvent("open", name, len(self.calls) - 1))
            self._call_text += self._pending[: match.end()]
            self._pending = self._pending[match.end() :]
            self._body = ""
        self._body += self._pending
        self._pending = ""
        close = self.syntax.close
        at = self._body.find(close) if close else -1
        if at < 0:
            brace = self._body.rfind("}")
            self._send_arguments(brace if brace >= 0 else len(self._body), events)
            return False
        self._pending = self._body[at + len(close) :]
        body = self._body[:at].rstrip()
        self._body = body[:-1] if body.endswith("}") else body
        self._send_arguments(len(self._body), events)
        self._in_call, self._body = False, None
        return True

    def _send_arguments(self, upto: int, events: list[CallEvent]) -> None:
        """Send the arguments text up to (not including) `_body[upto]`."""
        call = self.calls[-1]
        if upto > len(call["arguments"]):
            fragment = self._body[len(call["arguments"]) : upto]
            call["arguments"] += fragment
            events.append(CallEvent("arguments", fragment, len(self.calls) - 1))


def _partial_suffix(text: str, opening: str) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of `opening`."""
    for n in range(min(len(opening) - 1, len(text)), 0, -1):
        if opening.startswith(text[-n:]):
            return n
    return 0
