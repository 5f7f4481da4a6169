"""Function tools on the wire: the request's `tools`, `tool_choice` and `parallel_tool_calls`
checked (each a 400 naming its `param`), the history's calls read, the answer's calls
written back — for chat completions, and for the Responses API's function tools.

    tools = parse_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
    messages = [chat_message(m, i) for i, m in enumerate(body.messages)]
    constraint = tool_constraint(tools, tokenizer, vocab_size)   # in a worker thread
    answer = ToolAnswer(call_syntax(tokenizer))                  # per choice
    answer.feed(text) / answer.finish() -> content and tool-call events

How the model sees the tools and writes its calls is `ownllm.models.tool_format` (the
serving and training renderer). Every call is constrained (`ownllm.engine.constraints.
tool_call_grammar`): `required` or a named function forces a call, `auto` lets the model
answer in text or open a call whose name and arguments are then forced to be valid, `none`
forbids a call; `parallel_tool_calls: false` allows one call. `strict` is accepted either
way: arguments always validate against the schema, which must be one llguidance can
enforce (else a 400 on `tools[i].function.parameters`).

Tools with a JSON `response_format` are a 400 on `response_format`: a constrained answer is
either calls or the schema's JSON, and combining both in one grammar is left out.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from ownllm.errors import InvalidRequestError
from ownllm.models.tool_format import (
    CallEvent,
    CallSyntax,
    ToolCallParser,
    ToolRequest,
    check_function_tool,
)

MAX_TOOLS = 128  # OpenAI's limit
TOOL_CHOICES = ("none", "auto", "required")
_ID_ALPHABET = string.ascii_letters + string.digits


def parse_tools(
    tools: list[Any] | None,
    tool_choice: Any = None,
    parallel_tool_calls: bool | None = None,
    param: str = "tools",
) -> ToolRequest | None:
    """The request's tools checked, or None when it sent none (then `tool_choice` and
    `parallel_tool_calls` must be left out too, as OpenAI answers)."""
    if tools is None:
        if tool_choice is not None:
            raise InvalidRequestError(
                "tool_choice is only allowed when tools are specified", param="tool_choice"
            )
        if parallel_tool_calls is not None:
            raise InvalidRequestError(
                "parallel_tool_calls is only allowed when tools are specified",
                param="parallel_tool_calls",
            )
        return None
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1.",
            param=param,
        )
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"at most {MAX_TOOLS} tools are allowed", param=param)
    rendered, schemas = [], {}
    for i, tool in enumerate(tools):
        function = check_function_tool(tool, f"{param}[{i}]")
        if function["name"] in schemas:
            raise InvalidRequestError(
                f"tool names must be unique: {function['name']!r} is given twice",
                param=f"{param}[{i}].function.name",
            )
        schemas[function["name"]] = _schema(function["parameters"], f"{param}[{i}]")
        rendered.append({"type": "function", "function": function})
    mode, forced = _tool_choice(tool_choice, schemas)
    return ToolRequest(
        rendered, schemas, mode, forced, parallel_tool_calls is not False and forced is None
    )


def _schema(parameters: Any, where: str) -> str:
    param = f"{where}.function.parameters"
    if not isinstance(parameters, dict):
        raise InvalidRequestError(f"{param} must be a JSON schema object", param=param)
    if parameters.get("type", "object") != "object":
        raise InvalidRequestError(
            f'{param} must describe an object ("type": "object"), as arguments are one',
            param=param,
        )
    from ownllm.engine.constraints import check_tool_schema

    return check_tool_schema(parameters, param)


def _tool_choice(choice: Any, schemas: dict[str, str]) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise InvalidRequestError(
                f"tool_choice must be 'none', 'auto', 'required' or a named function, "
                f"not {choice!r}",
                param="tool_choice",
            )
        return choice, None
    name = None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name is None:
            name = choice.get("name")  # the Responses API's flat form
    if not isinstance(name, str):
        raise InvalidRequestError(
            'a named tool_choice is {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in schemas:
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not among the tools",
            param="tool_choice",
        )
    return "required", name


def tool_spec(tools: ToolRequest, syntax: CallSyntax) -> Any:
    """The engine's description of what this request may call (`ToolCallSpec`)."""
    from ownllm.engine.constraints import ToolCallSpec

    return ToolCallSpec(
        functions=tools.callable_functions,
        mode=tools.mode,
        is_parallel=tools.is_parallel,
        open=syntax.open,
        close=syntax.close,
        arguments_key=syntax.arguments_key,
        separator=syntax.separator,
    )


def tool_constraint(tools: ToolRequest, tokenizer: Any, vocab_size: int | None) -> Any:
    """The constraint of an answer with `tools` (build it off the event loop: ~ms)."""
    from ownllm.engine.constraints import constraint_for_tools
    from ownllm.models.tool_format import call_syntax

    return constraint_for_tools(tokenizer, tool_spec(tools, call_syntax(tokenizer)), vocab_size)


# -- history ----------------------------------------------------------------------------------


def history_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` as the renderer takes them (arguments parsed)."""
    if not isinstance(calls, list):
        raise InvalidRequestError(f"{where} must be an array", param=where)
    out = []
    for j, call in enumerate(calls):
        here = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequestError(
                f"{here} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}",
                param=here,
            )
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as e:
            raise InvalidRequestError(
                f"{here}.function.arguments is not valid JSON ({e.msg})",
                param=f"{here}.function.arguments",
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidRequestError(
                f"{here}.function.arguments must be a JSON object",
                param=f"{here}.function.arguments",
            )
        function = {"name": function["name"], "arguments": parsed}
        out.append(
            {"id": call.get("id") or new_call_id(), "type": "function", "function": function}
        )
    return out


def new_call_id() -> str:
    """A tool call id as OpenAI writes them: `call_` and 24 letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


# -- the answer -------------------------------------------------------------------------------


@dataclass
class ToolAnswer:
    """One choice's text read as content and tool calls, as it streams.

    `feed(text)` returns the events the client should see now; `finish()` the last ones.
    Whitespace between calls (their separator) is not content."""

    syntax: CallSyntax
    ids: list[str] = field(default_factory=list)  # the call ids, in order
    content: str = ""
    _parser: ToolCallParser | None = None

    def __post_init__(self) -> None:
        self._parser = ToolCallParser(self.syntax)

    def feed(self, text: str) -> list[CallEvent]:
        return self._keep(self._parser.feed(text))

    def finish(self) -> list[CallEvent]:
        return self._keep(self._parser.finish())

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The calls as OpenAI writes them in a message: id, type, function name and
        arguments (JSON text)."""
        return [
            {"id": call_id, "type": "function", "function": dict(call)}
            for call_id, call in zip(self.ids, self._parser.calls)
        ]

    def _keep(self, events: list[CallEvent]) -> list[CallEvent]:
        kept = []
        for event in events:
            if event.kind == "open":
                self.ids.append(new_call_id())
            elif event.kind == "content":
                if self.ids and not event.text.strip():
                    continue
                self.content += event.text
            kept.append(event)
        return kept
