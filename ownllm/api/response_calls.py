"""From a Responses API request to the chat call the inference path runs.

`response_call` translates `POST /v1/responses` into the chat completions request it
means — instructions as the first system message, then the stored conversation of
`previous_response_id`, then the input items as messages (`function_call` items as an
assistant's `tool_calls`, `function_call_output` items as `tool` messages), function
tools in chat's shape, `text.format` as `response_format`, `max_output_tokens` as
`max_completion_tokens` — and builds its `InferenceCall` with `chat_call`, so model
resolution, adapters, sampling defaults, tools and every check are chat's own. A 400
raised on the chat side names the Responses field it came from (`ResponseCall.param`).

The `file_search` tool becomes chat's `file_search` extension: the run retrieves sources
first (`ownllm.api.response_file_search`). Left out, each a 400 naming it: the other
built-in tools (`web_search`, `code_interpreter`, …), image, file and audio content, `item_reference` and reasoning
items, and the fields `ownllm.api.response_schemas.REFUSED` lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ownllm.api.calls import chat_call
from ownllm.api.errors import _param_of
from ownllm.api.response_schemas import ResponseRequest
from ownllm.api.schemas import ChatCompletionRequest
from ownllm.api.state import AppState
from ownllm.errors import InvalidRequestError
from ownllm.gateway.hooks import InferenceCall
from ownllm.gateway.principal import Principal
from ownllm.ids import new_id

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text")
TOOL_CHOICES = ("none", "auto", "required")


@dataclass
class ResponseCall:
    """A Responses request on its way: the chat call, and what the response echoes."""

    call: InferenceCall
    body: ResponseRequest
    input_items: list[dict[str, Any]]  # this request's items, as input_items lists them
    history: list[dict[str, Any]]  # the conversation of previous_response_id
    messages: list[dict[str, Any]]  # this input as chat messages (no instructions)
    sources: list[str] = field(default_factory=list)  # chat message k -> its request field
    file_search: Any = None  # the file_search tool as chat's FileSearchOptions
    file_search_index: int | None = None  # its place in `tools`

    @property
    def num_instructions(self) -> int:
        return 1 if self.body.instructions else 0

    def param(self, param: str | None) -> str | None:
        """The Responses field a chat-side `param` names."""
        if param and param.startswith("file_search.") and self.file_search_index is not None:
            return f"tools[{self.file_search_index}]." + param.removeprefix("file_search.")
        return translate_param(param, self.sources)

    def conversation(self, output_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation a response continuing this one starts from: the history, this
        input as the model read it (the guard's redactions kept), then `output_messages`."""
        seen = self.call.messages or []
        skip = self.num_instructions + len(self.history)
        mine = seen[skip:] if len(seen) == skip + len(self.messages) else []
        own = [
            {**sent, "content": read.get("content")} if isinstance(read.get("content"), str)
            else sent
            for sent, read in zip(self.messages, mine, strict=False)
        ] or self.messages  # fmt: skip
        if self.file_search is not None:  # the question as asked, without this turn's sources
            from ownllm.vectors.sources import without_sources

            own = [{**m, "content": without_sources(m["content"])} if m.get("role") == "user"
                   and isinstance(m.get("content"), str) else m for m in own]  # fmt: skip
        return [*self.history, *own, *output_messages]


def response_call(
    state: AppState,
    principal: Principal,
    body: ResponseRequest,
    history: list[dict[str, Any]] | None = None,
) -> ResponseCall:
    """The chat call of `body`, after `history` (the conversation it continues)."""
    refused = body.refused_field()
    if refused is not None:
        raise InvalidRequestError(refused[1], param=refused[0], code="unsupported_parameter")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequestError(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    history = list(history or [])
    messages, items, item_sources = input_messages(body.input)
    sources = (["instructions"] if body.instructions else []) + ["previous_response_id"] * len(
        history
    )
    sources += item_sources
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": (
            [{"role": "system", "content": body.instructions}] if body.instructions else []
        )
        + history
        + messages,
        "stream": body.stream,
        **_fields(body),
    }
    if not chat["messages"]:
        raise InvalidRequestError(
            "Nothing to respond to: give `input` (or a `previous_response_id`).", param="input"
        )
    _check_include(body.include)
    function_tools, file_search_index = _split_tools(body.tools or [])
    if function_tools:
        chat["tools"] = [_chat_tool(tool, i) for i, tool in function_tools]
        chat["parallel_tool_calls"] = body.parallel_tool_calls
    if file_search_index is not None:
        chat["file_search"] = _file_search_options(body.tools[file_search_index])
    if body.tool_choice is not None:
        chat["tool_choice"] = _chat_tool_choice(body.tool_choice)
    response_format = _response_format(body)
    if response_format is not None:
        chat["response_format"] = response_format
    try:
        request = ChatCompletionRequest.model_validate(chat)
        call = chat_call(state, principal, request)
    except ValidationError as e:
        first = e.errors()[0]
        param = _param_of(tuple(first.get("loc", ())))
        if param and param.startswith("file_search.") and file_search_index is not None:
            param = f"tools[{file_search_index}]." + param.removeprefix("file_search.")
        else:
            param = translate_param(param, sources)
        raise InvalidRequestError(
            f"Invalid value for '{param}': {first.get('msg', 'invalid value')}.", param=param
        ) from None
    except InvalidRequestError as e:
        e.param = translate_param(e.param, sources)
        raise
    call.request_id = new_id("resp")
    call.endpoint = "responses"
    # `store` keeps the response for previous_response_id; capture for fine-tuning data
    # still follows the key's, tenant's or server's default, and never when store is false
    call.store = None if body.store else False
    return ResponseCall(
        call, body, items, history, messages, sources, request.file_search, file_search_index
    )


INCLUDABLE = ("file_search_call.results",)


def _check_include(include: list[str] | None) -> None:
    for i, value in enumerate(include or ()):
        if value not in INCLUDABLE:
            raise InvalidRequestError(
                f"Invalid 'include[{i}]': {value!r} is not available; ownllm can include "
                f"{', '.join(INCLUDABLE)}.",
                param=f"include[{i}]",
                code="unsupported_parameter",
            )


def _split_tools(tools: list[Any]) -> tuple[list[tuple[int, Any]], int | None]:
    """(the function tools with their places, the place of the one file_search tool)."""
    functions, file_search = [], None
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "file_search":
            if file_search is not None:
                raise InvalidRequestError(
                    f"Invalid 'tools[{i}]': give one file_search tool (it takes several "
                    "vector_store_ids).",
                    param=f"tools[{i}]",
                )
            file_search = i
        else:
            functions.append((i, tool))
    return functions, file_search


def _file_search_options(tool: dict[str, Any]) -> dict[str, Any]:
    """The file_search tool as chat's `file_search` extension (checked by its model)."""
    keys = ("vector_store_ids", "max_num_results", "filters", "ranking_options")
    return {key: tool[key] for key in keys if tool.get(key) is not None}


def _fields(body: ResponseRequest) -> dict[str, Any]:
    fields = {
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "ignore_eos": body.ignore_eos or None,
        "user": body.user or body.safety_identifier,
        "metadata": body.metadata,
        "adapters": [a.model_dump() for a in body.adapters] if body.adapters else None,
    }
    return {key: value for key, value in fields.items() if value is not None}


# -- input items ------------------------------------------------------------------------------


def input_messages(
    value: str | list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(chat messages, input items with ids, the request field of each message)."""
    if isinstance(value, str):
        if not value:
            return [], [], []
        item = _message_item("user", value)
        return [{"role": "user", "content": value}], [item], ["input"]
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    sources: list[str] = []
    for i, raw in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(raw, dict):
            raise InvalidRequestError(f"Invalid '{where}': expected an object.", param=where)
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind == "message":
            role, text = _message(raw, where)
            messages.append({"role": role, "content": text})
            items.append(_message_item(role, text, raw.get("id")))
            sources.append(where)
        elif kind == "function_call":
            call_id, name, arguments = (
                _string(raw, key, where) for key in ("call_id", "name", "arguments")
            )
            tool_call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(tool_call)  # one turn's calls
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
                sources.append(where)
            items.append({
                "id": raw.get("id") or new_id("fc"), "type": "function_call", "call_id": call_id,
                "name": name, "arguments": arguments, "status": "completed",
            })  # fmt: skip
        elif kind == "function_call_output":
            call_id = _string(raw, "call_id", where)
            output = _output_text(raw.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            items.append({
                "id": raw.get("id") or new_id("fco"), "type": "function_call_output",
                "call_id": call_id, "output": output, "status": "completed",
            })  # fmt: skip
            sources.append(where)
        else:
            what = (
                f"input items of type {kind!r} are" if kind else "an input item without a type is"
            )
            raise InvalidRequestError(
                f"Invalid '{where}.type': {what} not supported; use message, function_call "
                "or function_call_output.",
                param=f"{where}.type",
            )
    return messages, items, sources


def _message(raw: dict[str, Any], where: str) -> tuple[str, str]:
    role = raw.get("role")
    if role not in MESSAGE_ROLES:
        raise InvalidRequestError(
            f"Invalid '{where}.role': expected one of {', '.join(MESSAGE_ROLES)}, got {role!r}.",
            param=f"{where}.role",
        )
    content = raw.get("content")
    if isinstance(content, str):
        return role, content
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"Invalid '{where}.content': expected a string or a list of content parts.",
            param=f"{where}.content",
        )
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and role == "assistant":
            texts.append(str(part.get("refusal") or ""))
        else:
            param = f"{where}.content[{j}]" + (".type" if kind else "")
            raise InvalidRequestError(
                f"Invalid '{param}': content parts of type {kind!r} are not supported; this "
                "model reads text only (input_text, output_text).",
                param=param,
            )
    return role, "".join(texts)


def _message_item(role: str, text: str, item_id: Any = None) -> dict[str, Any]:
    item_id = item_id if isinstance(item_id, str) and item_id else new_id("msg")
    if role == "assistant":
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    else:
        part = {"type": "input_text", "text": text}
    return {"id": item_id, "type": "message", "role": role, "status": "completed",
            "content": [part]}  # fmt: skip


def _string(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or (key != "arguments" and not value):
        raise InvalidRequestError(
            f"Missing or invalid '{where}.{key}': expected a non-empty string.",
            param=f"{where}.{key}",
        )
    return value


def _output_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") in TEXT_PARTS
                    and isinstance(part.get("text"), str)):  # fmt: skip
                raise InvalidRequestError(
                    f"Invalid '{where}[{j}]': only input_text parts are supported.",
                    param=f"{where}[{j}]",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequestError(f"Invalid '{where}': expected a string.", param=where)


# -- tools and formats ------------------------------------------------------------------------


def _chat_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    """A Responses function tool (`{type, name, parameters, strict}`) in chat's shape."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise InvalidRequestError(
            f"Invalid 'tools[{i}].type': {kind!r} tools are not supported; ownllm runs no "
            "built-in tools but file_search (web_search, code_interpreter, …): declare "
            "function tools and run them yourself.",
            param=f"tools[{i}].type",
            code="unsupported_parameter",
        )
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict")
                if tool.get(key) is not None}  # fmt: skip
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise InvalidRequestError(
                f"Invalid 'tool_choice': expected one of {', '.join(TOOL_CHOICES)} or "
                f"{{'type': 'function', 'name': …}}, got {choice!r}.",
                param="tool_choice",
            )
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise InvalidRequestError(
            "Invalid 'tool_choice': only {'type': 'function', 'name': …} or none, auto, "
            "required are supported (no built-in or allowed_tools choices).",
            param="tool_choice",
        )
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(body: ResponseRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise InvalidRequestError(
            "text.format.schema is required for type json_schema", param="text.format.schema"
        )
    spec = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
    if fmt.description is not None:
        spec["description"] = fmt.description
    return {"type": "json_schema", "json_schema": spec}


# chat's fields -> the Responses fields they came from (besides messages[k])
_RENAMES = (
    (re.compile(r"^tools\[(\d+)\]\.function"), r"tools[\1]"),
    (re.compile(r"^tool_choice\.function"), "tool_choice"),
    (re.compile(r"^response_format\.json_schema"), "text.format"),
    (re.compile(r"^response_format"), "text.format"),
    (re.compile(r"^max_(completion_)?tokens"), "max_output_tokens"),
)
_MESSAGE = re.compile(r"^messages(?:\[(\d+)\](\.content)?)?")


def translate_param(param: str | None, sources: list[str]) -> str | None:
    """A chat request's `param` as the Responses request names it."""
    if not param:
        return param
    match = _MESSAGE.match(param)
    if match:
        if match.group(1) is None:
            return "input"
        k = int(match.group(1))
        source = sources[k] if k < len(sources) else "input"
        if source in ("instructions", "previous_response_id"):
            return source
        return source + (match.group(2) or "")
    for pattern, replacement in _RENAMES:
        if pattern.match(param):
            return pattern.sub(replacement, param, count=1)
    return param
