"""How a Responses API response is written: the `response` object and its typed events.

`ResponseObject` writes the object exactly as OpenAI does — every field its spec
requires, the request's settings echoed (`instructions`, `tools`, `text`, the sampling
values used), `output` items (`message` with `output_text` parts, `function_call`),
`usage` in input/output tokens, `status` and `incomplete_details`. `EventWriter`
writes server-sent events as OpenAI sends them: `event: <type>` and a `data:` object
with that `type` and a `sequence_number` counting from 0.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ownllm.api.response_calls import ResponseCall

# finish_reason -> incomplete_details.reason (absent: the response completed)
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# error codes OpenAI's spec allows in a response's `error` (others are "server_error")
RESPONSE_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> dict[str, Any]:  # fmt: skip
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}  # fmt: skip


def usage_object(num_input: int, num_output: int, num_cached: int) -> dict[str, Any]:
    return {
        "input_tokens": num_input,
        "input_tokens_details": {"cached_tokens": num_cached, "cache_write_tokens": 0},
        "output_tokens": num_output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": num_input + num_output,
    }


def response_error(code: str | None, message: str) -> dict[str, Any]:
    return {"code": code if code in RESPONSE_ERROR_CODES else "server_error", "message": message}


class ResponseObject:
    """The `response` object of one call, in any state: in progress, completed,
    incomplete or failed."""

    def __init__(self, rc: ResponseCall, *, is_stored: bool) -> None:
        body, sampling = rc.body, rc.call.sampling
        self.id = rc.call.request_id
        self.created_at = int(time.time())
        self.settings = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": rc.call.model,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": is_stored,
            "temperature": sampling.temperature,
            "text": {"format": _text_format(rc), "verbosity": "medium"},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": [_tool(t) for t in body.tools or ()],
            "top_p": sampling.top_p,
            "truncation": "disabled",
            "metadata": dict(body.metadata or {}),
            "background": False,
        }
        if body.user is not None:  # the spec's `user` is a string, never null
            self.settings["user"] = body.user

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        finish_reason: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        reason = INCOMPLETE.get(finish_reason or "")
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": reason} if status == "incomplete" else None,
            "output": output,
            **self.settings,
        }
        if usage is not None:  # the spec's `usage` is an object, never null: absent until known
            body["usage"] = usage
        return body


def status_of(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason in INCOMPLETE else "completed"


def _text_format(rc: ResponseCall) -> dict[str, Any]:
    fmt = rc.body.text.format if rc.body.text is not None else None
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    out = {"type": "json_schema", "name": fmt.name or "response", "schema": fmt.schema_,
           "strict": fmt.strict}  # fmt: skip
    if fmt.description is not None:
        out["description"] = fmt.description
    return out


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") == "file_search":
        return {
            "type": "file_search",
            "vector_store_ids": tool.get("vector_store_ids"),
            "max_num_results": tool.get("max_num_results", 5),
            "filters": tool.get("filters"),
            "ranking_options": tool.get("ranking_options")
            or {"ranker": "auto", "score_threshold": 0},
        }
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


class EventWriter:
    """Server-sent events of one response, numbered in the order they are written."""

    def __init__(self) -> None:
        self.sequence_number = 0

    def event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {type_}\ndata: {payload}\n\n".encode()
