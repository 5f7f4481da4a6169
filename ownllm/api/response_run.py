"""A Responses API call on the one inference path, and its stored conversation.

`serve_response` loads the conversation of `previous_response_id` (the tenant's own, else
404), translates the request into its chat call (`ownllm.api.response_calls`) and serves
it as a `ResponseRun` through `ownllm.api.inference.serve` — the same admission, limits,
guard, ledger and capture as chat. A `ResponseRun` is a `GenerationRun` that writes the
result as a `response` object (`ownllm.api.response_objects`): whole, or as OpenAI's
typed events

    response.created → response.in_progress → response.output_item.added
    → response.content_part.added → response.output_text.delta … → response.output_text.done
    → response.content_part.done → response.output_item.done
    → response.completed (response.incomplete when max_output_tokens or the guard cut it)

— a function call is its own `function_call` item, streamed as
`response.output_item.added` → `response.function_call_arguments.delta` … →
`response.function_call_arguments.done` → `response.output_item.done`, the answer read
as text and calls by chat's reader (`ownllm.api.tools.ToolAnswer`) — and `error` then
`response.failed` when the backend fails mid-stream. With `store` (the
default) the response is saved before the client sees it complete, so a next request can
name it at once. `run_response_body` runs one request body for a principal without HTTP,
for the batch runner.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from ownllm.api.errors import _param_of, error_body
from ownllm.api.generation import SSE_HEADERS, EventStreamResponse, GenerationRun
from ownllm.api.inference import serve
from ownllm.api.response_calls import ResponseCall, response_call
from ownllm.api.response_objects import (
    INCOMPLETE,
    EventWriter,
    ResponseObject,
    response_error,
    status_of,
    usage_object,
)
from ownllm.api.response_output import ResponseOutput
from ownllm.api.response_schemas import ResponseRequest
from ownllm.api.state import AppState
from ownllm.api.tools import ToolAnswer
from ownllm.errors import InvalidRequestError, OwnLLMError, ServerError
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.principal import Principal
from ownllm.gateway.stored_responses import get_response, save_response
from ownllm.models.tool_format import CallEvent, call_syntax

log = logging.getLogger("ownllm.api")


class ResponseRun(GenerationRun):
    """One Responses call: a chat generation written as a `response`."""

    def __init__(self, rc: ResponseCall, state: AppState, gateway: Gateway) -> None:
        super().__init__(rc.call, None, state, gateway)  # no chat Format: written here
        self.rc = rc
        self.is_stored = rc.body.store and state.db is not None
        self.response = ResponseObject(rc, is_stored=self.is_stored)
        self.writer = EventWriter() if rc.call.is_stream else None
        self.output = ResponseOutput(self.writer)
        self.is_ended = False  # the whole answer went through `output`
        # with tools, the answer is read as text and calls (chat's reader, ownllm.api.tools)
        self.answer = ToolAnswer(call_syntax(state.tokenizer)) if rc.call.tools else None
        self._held = ""  # whitespace before a call, which is no message

    async def respond(self, request: Request) -> Response:
        if self.call.is_stream:
            return EventStreamResponse(self._sse(), headers=SSE_HEADERS)
        return await super().respond(request)

    # -- the answer as output items -----------------------------------------------------------

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    def feed(self, text: str, finish_reason: str | None) -> bytes:
        """A delta of the answer into `output`; its events (b"" when not streamed)."""
        if self.answer is None:
            out = self.output.content(text) if text else b""
        else:
            events = self.answer.feed(text) if text else []
            if finish_reason is not None:
                events += self.answer.finish()
            out = b"".join(self._piece(e) for e in events)
        if finish_reason is not None:
            self.is_ended = True
            out += self.output.finish("incomplete" if finish_reason in INCOMPLETE else "completed")
        return out

    def _piece(self, event: CallEvent) -> bytes:
        if event.kind == "open":
            self._held = ""
            return self.output.open_call(self.answer.ids[event.index], event.text)
        if event.kind == "arguments":
            return self.output.arguments(event.text)
        text, self._held = self._held + event.text, ""
        if not self.output.is_open and not text.strip():
            self._held = text  # content only once it says something
            return b""
        return self.output.content(text)

    def answer_message(self) -> dict[str, Any]:
        """The answer as the assistant message of the stored conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.output.text}
        if self.answer is not None and self.answer.ids:
            message["content"] = self.output.text or None
            message["tool_calls"] = self.answer.calls
        return message

    def usage_object(self) -> dict[str, Any]:
        usage = self.usage()
        return usage_object(
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["prompt_tokens_details"]["cached_tokens"],
        )

    async def final_body(self) -> dict[str, Any]:
        """The finished response, saved first when it is stored."""
        if not self.is_ended:  # not streamed: the whole answer at once
            self.feed(self.choices[0].text if self.choices else "", self.finish_reason or "stop")
        status = status_of(self.finish_reason)
        body = self.response.body(
            status, self.output.items, self.usage_object(), finish_reason=self.finish_reason
        )
        if self.is_stored:
            await self._save(body)
        return body

    async def _save(self, body: dict[str, Any]) -> None:
        conversation = self.rc.conversation([self.answer_message()])
        try:
            await asyncio.to_thread(
                save_response, self.state.db, self.call.principal, body, self.rc.input_items,
                conversation,
            )  # fmt: skip
        except Exception:  # the answer still goes out; it says it was not stored
            log.exception("storing response %s failed", self.call.request_id)
            body["store"] = False

    # -- the events ---------------------------------------------------------------------------

    async def _sse(self) -> AsyncIterator[bytes]:
        w, response = self.writer, self.response
        started = response.body("in_progress", [])
        pending = w.event("response.created", response=started)
        pending += w.event("response.in_progress", response=started)
        try:
            async for _choice, text, _logprobs, finish_reason in self.events():
                pending += self.feed(text, finish_reason)
                if finish_reason is None and pending:
                    yield pending
                    pending = b""
            body = await self.final_body()
            last = "response.completed" if body["status"] == "completed" else "response.incomplete"
            yield pending + w.event(last, response=body)
        except Exception as e:  # mid-stream: the status line is already sent
            error = self.fail(e)["error"]
            failed = response.body(
                "failed", self.output.snapshot("incomplete"), self.usage_object(),
                error=response_error(error["code"], error["message"]),
            )  # fmt: skip
            yield (
                pending
                + w.event(
                    "error",
                    code=error["code"],
                    message=error["message"],
                    param=self.rc.param(error["param"]),
                )
                + w.event("response.failed", response=failed)
            )
        except (asyncio.CancelledError, GeneratorExit):
            self.is_client_gone = True
            self.status_code = 499
            raise
        finally:
            await self.close()


async def response_run(
    state: AppState, gateway: Gateway, principal: Principal, body: ResponseRequest
) -> ResponseRun:
    """The run of one Responses request (a live one, or a batch line), its conversation
    loaded; its errors name chat fields until `rc.param` maps them."""
    history = None
    if body.previous_response_id is not None:
        if state.db is None:
            raise InvalidRequestError(
                "previous_response_id needs a server with a database (stored responses)",
                param="previous_response_id",
            )
        row = await asyncio.to_thread(
            get_response, state.db, principal, body.previous_response_id, "previous_response_id"
        )
        history = row.conversation
    rc = response_call(state, principal, body, history)
    if rc.file_search is not None:
        from ownllm.api.response_file_search import FileSearchResponseRun

        return FileSearchResponseRun(rc, state, gateway)
    return ResponseRun(rc, state, gateway)


async def serve_response(
    state: AppState, gateway: Gateway, principal: Principal, body: ResponseRequest,
    request: Any,
) -> Response:  # fmt: skip
    """POST /v1/responses for `principal`: JSON, or events with `stream: true`."""
    run = await response_run(state, gateway, principal, body)
    try:
        return await serve(run, request)
    except OwnLLMError as e:
        e.param = run.rc.param(e.param)
        raise


class _NoClient:
    """The request of a call without an HTTP client (a batch line): never disconnects."""

    async def is_disconnected(self) -> bool:
        return False


async def run_response_body(
    state: AppState, gateway: Gateway, principal: Principal, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """Run one `POST /v1/responses` body for `principal`, not streamed (a batch line):
    (HTTP status, the response object or the OpenAI error body)."""
    try:
        parsed = ResponseRequest.model_validate({**body, "stream": False})
        response = await serve_response(state, gateway, principal, parsed, _NoClient())
    except ValidationError as e:
        first = e.errors()[0]
        param = _param_of(tuple(first.get("loc", ())))
        error = InvalidRequestError(f"Invalid value for '{param}': {first['msg']}.", param=param)
        return 400, error_body(error)
    except OwnLLMError as e:
        return e.status_code, error_body(e)
    except Exception:
        log.exception("batch response failed")
        return 500, error_body(ServerError("The server had an error processing the request."))
    return response.status_code, json.loads(bytes(response.body))
