"""`GenerationRun`: a chat or completions call on the inference path (`ownllm.api.inference`).

- `prepare`: tokenise (`ownllm.api.tokens`).
- `start`: one `GenerateRequest` per prompt, with the JSON constraint for `response_format`
  built off the event loop, handed to the backend (`ownllm.api.fan_in`).
- `respond`: the events as the client should see them (the output guard on each delta),
  written as one JSON body or as server-sent events by the call's `Format`
  (`ownllm.api.formats`).

Streaming is OpenAI's server-sent events. The first delta is awaited before the response
starts, so an error the backend raises at once (queue full, context too long) is a plain
JSON error with its status; an error after that is sent as a `data: {"error": …}` event.
When the client goes away the generation is closed, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ownllm.api.fan_in import ClientGoneError, Generation
from ownllm.api.formats import ChoiceText, Format, usage_body
from ownllm.api.inference import Run
from ownllm.api.state import AppState
from ownllm.api.tokens import max_model_len, tokenise
from ownllm.api.tools import tool_constraint
from ownllm.backends.base import PRIORITY_BATCH, PRIORITY_INTERACTIVE, GenerateRequest
from ownllm.errors import InvalidRequestError, OverloadedError
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.hooks import ChoiceOutcome, InferenceCall, InferenceOutcome

DISCONNECT_POLL_S = 1.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class GenerationRun(Run):
    """A chat or completions call: its generation, what each choice has produced, timings."""

    def __init__(self, call: InferenceCall, fmt: Format, state: AppState, gateway: Gateway) -> None:
        super().__init__(call, gateway, state.metrics)
        self.fmt = fmt
        self.state = state
        self.generation: Generation | None = None
        self.choices: list[ChoiceText] = []
        self.num_cached: dict[int, int] = {}
        self.ttft_s: float | None = None

    async def prepare(self) -> None:
        await tokenise(self.call, self.state.tokenizer, max_model_len(self.state.backend))

    def submits_during_guard(self) -> bool:
        return self.state.config.guard.during_call and not self.state.backend.may_leave_premises(
            self.call.principal.tenant_id, self.call.model
        )

    async def submit(self) -> None:
        requests = await generate_requests(self.call, self.state.tokenizer, self.state.backend)
        self.generation = Generation(self.state.backend, requests)
        self.generation.submit()

    async def withdraw(self) -> None:
        await self.release()
        self.generation = None

    async def start(self) -> None:
        if self.generation is None:
            await self.submit()
        num_choices = sum(r.sampling.n for r in self.generation.requests)
        self.choices = [ChoiceText(i) for i in range(num_choices)]
        await self.generation.start()

    async def respond(self, request: Request) -> Response:
        if self.call.is_stream:
            return EventStreamResponse(_sse(self), headers=SSE_HEADERS)
        return await collect(self, request)

    async def events(self) -> AsyncIterator[tuple[ChoiceText, str, list, str | None]]:
        """(choice, new text, new logprobs, finish_reason) as the client should see them."""
        n, gateway = self.call.sampling.n, self.gateway
        checks_output = gateway.checks_output
        async for delta in self.generation.deltas():
            choice = self.choices[delta.index]
            if choice.finish_reason is not None:
                continue  # cut by the output guard; the engine finishes it unseen
            if delta.finish_reason == "abort":
                choice.finish_reason = "abort"  # the usage ledger records it as cancelled
                raise OverloadedError("the request was aborted: the server is shutting down")
            k = delta.index // n
            self.num_cached[k] = max(self.num_cached.get(k, 0), delta.num_cached_tokens)
            choice.num_output_tokens = max(choice.num_output_tokens, delta.num_output_tokens)
            if self.ttft_s is None and (delta.text or delta.token_ids):
                self.ttft_s = time.monotonic() - self.call.started_at
                self.metrics.ttft.labels(self.call.endpoint).observe(self.ttft_s)
            text, finish_reason = delta.text, delta.finish_reason
            if checks_output and text:
                text = await gateway.check_output(self.call, delta.index, text)
                if text is None:
                    text, finish_reason = "", "content_filter"
            if checks_output and finish_reason is not None and finish_reason != "content_filter":
                tail, is_cut = await gateway.flush_output(self.call, delta.index)
                text += tail
                if is_cut:
                    finish_reason = "content_filter"
            choice.text += text
            if delta.logprobs:
                choice.logprobs.extend(delta.logprobs)
            choice.finish_reason = finish_reason
            yield choice, text, delta.logprobs or [], finish_reason
            if all(c.finish_reason is not None for c in self.choices):
                return

    async def final_body(self) -> dict[str, Any]:
        """The JSON body of the finished call (not streamed)."""
        return self.fmt.response(self.choices, self.usage())

    def usage(self) -> dict[str, Any]:
        num_output = sum(c.num_output_tokens for c in self.choices)
        return usage_body(self.call.num_prompt_tokens, num_output, sum(self.num_cached.values()))

    def outcome(self) -> InferenceOutcome:
        usage = self.usage()
        # the engine read the prompt only if it answered at all
        is_read = self.ttft_s is not None or usage["completion_tokens"] > 0
        return replace(
            super().outcome(),
            choices=[
                ChoiceOutcome(c.index, c.text, c.finish_reason, c.num_output_tokens)
                for c in self.choices
            ],
            num_prompt_tokens=usage["prompt_tokens"] if is_read else 0,
            num_cached_tokens=usage["prompt_tokens_details"]["cached_tokens"] if is_read else 0,
            num_output_tokens=usage["completion_tokens"],
            is_complete=bool(self.choices) and all(c.finish_reason for c in self.choices),
            ttft_s=self.ttft_s,
        )

    async def release(self) -> None:
        if self.generation is not None:
            await self.generation.close()


async def generate_requests(
    call: InferenceCall, tokenizer: Any, backend: Any
) -> list[GenerateRequest]:
    """One GenerateRequest per prompt; the `response_format` or tools constraint built in
    a thread, for a backend that decodes with local token constraints (one that forwards
    the request to another server passes `response_format` on instead, and refuses tools)."""
    constraint = None
    vocab_size = backend.model_info.vocab_size
    bias = call.sampling.logit_bias if call.sampling is not None else ()
    if bias and backend.uses_token_constraints and vocab_size and bias[-1][0] >= vocab_size:
        raise InvalidRequestError(
            f"logit_bias names token {bias[-1][0]}; this model's token ids are 0..{vocab_size - 1}",
            param="logit_bias",
        )
    if call.tools is not None:
        if not backend.uses_token_constraints:
            raise InvalidRequestError(
                "tools (function calling) are not supported by this model's backend",
                param="tools",
            )
        constraint = await asyncio.to_thread(tool_constraint, call.tools, tokenizer, vocab_size)
    elif call.response_format is not None and backend.uses_token_constraints:
        constraint = await asyncio.to_thread(
            _constraint, tokenizer, call.response_format, vocab_size
        )
    ids = call.prompt_token_ids
    return [
        GenerateRequest(
            request_id=call.request_id if len(ids) == 1 else f"{call.request_id}-{k}",
            prompt_token_ids=prompt_ids,
            sampling=call.sampling,
            adapters=call.adapters,
            cache_scope=call.principal.tenant_id,
            model=call.model,
            constraint=constraint if k == 0 else constraint.fork() if constraint else None,
            priority=PRIORITY_BATCH if call.batch_id else PRIORITY_INTERACTIVE,
            messages=call.messages,
            prompt_text=call.prompts[k] if call.prompts is not None else None,
            response_format=call.response_format,
        )
        for k, prompt_ids in enumerate(ids)
    ]


def _constraint(tokenizer: Any, response_format: dict[str, Any], vocab_size: int) -> Any:
    from ownllm.engine.constraints import constraint_for_response_format

    return constraint_for_response_format(tokenizer, response_format, vocab_size)


# -- the response -----------------------------------------------------------------------------


async def collect(run: GenerationRun, request: Request) -> JSONResponse:
    watcher = asyncio.create_task(_watch_disconnect(run, request))
    try:
        async for _ in run.events():
            pass
    except ClientGoneError:
        run.is_client_gone = True
        run.status_code = 499  # nginx's "client closed request"; nobody receives it
        return JSONResponse({}, status_code=499)
    except Exception as e:
        run.fail(e)
        raise
    finally:
        watcher.cancel()
        await run.close()
    return JSONResponse(await run.final_body())


async def _watch_disconnect(run: GenerationRun, request: Request) -> None:
    """A non-streaming client that hangs up stops its generation too."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    run.generation.stop(ClientGoneError())


def _frame(body: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


async def _sse(run: GenerationRun) -> AsyncIterator[bytes]:
    """The events of a streamed call. The role chunks go out in one write with the first
    token's chunk, and the last chunk with the usage chunk and [DONE]: each write costs a
    pass through the ASGI server and a system call, and these follow each other at once."""
    fmt = run.fmt
    pending = b"".join(_frame(c) for c in fmt.start_chunks([c.index for c in run.choices]))
    try:
        async for choice, text, logprobs, finish_reason in run.events():
            if text or logprobs or finish_reason:  # a token that ends mid-character says nothing
                for chunk in fmt.delta_chunks(choice.index, text, logprobs, finish_reason):
                    pending += _frame(chunk)
                if not finish_reason or any(c.finish_reason is None for c in run.choices):
                    yield pending
                    pending = b""
        if fmt.include_usage:
            pending += _frame(fmt.usage_chunk(run.usage()))
        yield pending + b"data: [DONE]\n\n"
    except Exception as e:  # mid-stream: the status line is already sent
        yield pending + _frame(run.fail(e))
    except (asyncio.CancelledError, GeneratorExit):
        run.is_client_gone = True
        run.status_code = 499
        raise
    finally:
        await run.close()


class EventStreamResponse(StreamingResponse):
    """text/event-stream that always closes its body iterator, however the send ends."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
