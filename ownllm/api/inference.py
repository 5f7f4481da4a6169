"""The one path every inference call takes, whatever its endpoint:

    parse (pydantic, in the route) → principal (dependency) → build the call (model,
    texts, parameters; `ownllm.api.calls`, `ownllm.api.routes.embeddings`)
    → admit_request (rpm, concurrency) → check_text_size (a cap on characters)
    → prepare (tokenise or count, long texts off the event loop; check the context)
    → admit_tokens (tpm, monthly budget on the real count)
    → check_input (input guard; prepare again when it changed the text)
    → start (the backend) → respond (JSON or SSE; output guard per delta)
    → finish (usage ledger, capture, metrics: exactly once, whatever happened)

`serve(state, request, run)` runs it; a `Run` subclass says what one endpoint does at
`prepare`, `start` and `respond` and what its outcome counted: `GenerationRun` below for
chat and completions, `EmbeddingRun` in the embeddings route. Admission, the guard, the
error shape and `finish` exist only here, so no endpoint can skip them
(tests/api/test_inference_routes.py walks the app's routes to prove it).

Nothing costly happens before `admit_request`: a key over its rate gets its 429 however
large its prompt, and a prompt that cannot fit is refused by its characters before the
tokenizer reads it.

The gateway stages are the small `admit_request`, `admit_tokens`, `check_input`,
`check_output` and `finish` functions below; each calls the hook objects in
`AppState.inference_hooks` (see `ownllm.gateway.hooks`), so limits, guardrails, usage and
capture plug in without touching the routes. What a generation endpoint writes is its
`Format` (`ownllm.api.formats`).

Streaming is OpenAI's server-sent events. The first delta is awaited before the response
starts, so an error the backend raises at once (queue full, context too long) is a plain
JSON error with its status; an error after that is sent as a `data: {"error": …}` event.
When the client goes away the generation is closed, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ownllm.api.calls import check_text_size, generate_requests, tokenise
from ownllm.api.errors import error_body
from ownllm.api.formats import ChoiceText, Format, usage_body
from ownllm.api.generation import ClientGoneError, Generation
from ownllm.api.metrics import metrics_for
from ownllm.api.state import AppState
from ownllm.errors import OverloadedError, OwnLLMError, ServerError
from ownllm.gateway.hooks import ChoiceOutcome, InferenceCall, InferenceOutcome

log = logging.getLogger("ownllm.api")

DISCONNECT_POLL_S = 1.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# -- gateway stages ---------------------------------------------------------------------------


def _hooks(state: AppState, method: str) -> list[Any]:
    hooks = state.inference_hooks
    return [fn for fn in (getattr(h, method, None) for h in hooks) if fn is not None]


async def admit_request(state: AppState, call: InferenceCall) -> None:
    """Request limits (rpm, concurrency), before the text is read: a hook raises
    RateLimitError to refuse."""
    for hook in _hooks(state, "admit_request"):
        await hook(call)


async def admit_tokens(state: AppState, call: InferenceCall) -> None:
    """Token limits (tpm, monthly budget) on the tokenised call: a hook raises
    RateLimitError or InsufficientQuotaError to refuse."""
    for hook in _hooks(state, "admit_tokens"):
        await hook(call)


async def check_input(state: AppState, call: InferenceCall) -> bool:
    """Input guard: a hook raises ContentPolicyError or replaces call.messages/prompts/inputs.
    Returns True when the text was changed (the caller prepares the call again)."""
    before = (call.messages, call.prompts, call.inputs)
    for hook in _hooks(state, "check_input"):
        await hook(call)
    return (call.messages, call.prompts, call.inputs) != before


async def check_output(hooks: list[Any], call: InferenceCall, index: int, text: str) -> str | None:
    """Output guard on each new piece of text: the text to send, or None to stop the choice
    with finish_reason content_filter."""
    for hook in hooks:
        result = await hook(call, index, text)
        if result is None:
            return None
        text = result
    return text


async def flush_output(hooks: list[Any], call: InferenceCall, index: int) -> tuple[str, bool]:
    """End of a choice: the text output guards still hold back (a streaming check keeps the
    tail that could be the start of a match), and whether a guard cut the choice."""
    text, is_cut = "", False
    for hook in hooks:
        tail, cut = await hook(call, index)
        text, is_cut = text + tail, is_cut or cut
    return text, is_cut


async def finish(state: AppState, call: InferenceCall, outcome: InferenceOutcome) -> None:
    """Usage ledger, capture, metrics: called exactly once per call, whatever happened."""
    metrics = metrics_for(state)
    ep = call.endpoint
    metrics.requests.labels(ep, str(outcome.status_code)).inc()
    metrics.prompt_tokens.labels(ep).inc(outcome.num_prompt_tokens)
    metrics.output_tokens.labels(ep).inc(outcome.num_output_tokens)
    metrics.latency.labels(ep).observe(outcome.latency_s)
    for choice in outcome.choices:
        reason = choice.finish_reason or ("client_gone" if outcome.is_client_gone else "error")
        metrics.finished.labels(ep, reason).inc()
    for hook in _hooks(state, "finish"):
        try:
            await hook(call, outcome)
        except Exception:  # a ledger failure must not turn a served answer into an error
            log.exception("inference finish hook %r failed", hook)


# -- the path ---------------------------------------------------------------------------------


class Run:
    """One inference call on the path: its status so far and its single `finish`.

    A subclass implements `prepare` (fill `call.prompt_token_ids`, raise a 400 naming the
    param), `start` (hand the admitted call to the backend) and `respond` (the HTTP
    response; it must end in `close`, at once or when a stream ends), and extends `outcome`
    with what its backend counted and `release` with what to abort."""

    def __init__(self, state: AppState, call: InferenceCall) -> None:
        self.state = state
        self.call = call
        self.status_code = 200
        self.error_code: str | None = None
        self.is_client_gone = False
        self._finished = False

    async def prepare(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def respond(self, request: Request) -> Response:
        raise NotImplementedError

    def outcome(self) -> InferenceOutcome:
        """The outcome before the backend answered: nothing read, nothing produced."""
        return InferenceOutcome(
            choices=[],
            num_prompt_tokens=0,
            num_cached_tokens=0,
            num_output_tokens=0,
            status_code=self.status_code,
            error_code=self.error_code,
            is_client_gone=self.is_client_gone,
            latency_s=time.monotonic() - self.call.started_at,
        )

    async def release(self) -> None:
        """Abort whatever of the call still runs on the backend."""

    def fail(self, error: BaseException) -> dict[str, Any]:
        """Record `error` as the outcome; its OpenAI body (5xx without internals)."""
        if not isinstance(error, OwnLLMError):
            log.error("inference %s failed", self.call.request_id, exc_info=error)
            error = ServerError("The server had an error while processing your request.")
        self.status_code, self.error_code = error.status_code, error.code
        return error_body(error)

    async def close(self) -> None:
        """Release the backend and report the outcome (once; shielded from cancel)."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            await self.release()
            await finish(self.state, self.call, self.outcome())
            metrics_for(self.state).in_progress.labels(self.call.endpoint).dec()


async def serve(state: AppState, request: Request, run: Run) -> Response:
    """Run one call through the gateway stages and its backend: the one path of every
    inference endpoint."""
    call = run.call
    metrics_for(state).in_progress.labels(call.endpoint).inc()
    try:
        await admit_request(state, call)
        check_text_size(call)
        await run.prepare()
        await admit_tokens(state, call)
        if await check_input(state, call):
            await run.prepare()
        await run.start()
        return await run.respond(request)
    except BaseException as e:
        if isinstance(e, Exception):
            run.fail(e)
        await run.close()  # a stream still running closes itself when it ends
        raise


# -- generation (chat, completions) ------------------------------------------------------------


class GenerationRun(Run):
    """A chat or completions call: its generation, what each choice has produced, timings."""

    def __init__(self, state: AppState, call: InferenceCall, fmt: Format) -> None:
        super().__init__(state, call)
        self.fmt = fmt
        self.generation: Generation | None = None
        self.choices: list[ChoiceText] = []
        self.num_cached: dict[int, int] = {}
        self.ttft_s: float | None = None
        self._guards = _hooks(state, "check_output")
        self._flushers = _hooks(state, "flush_output")

    async def prepare(self) -> None:
        await tokenise(self.state, self.call)

    async def start(self) -> None:
        requests = await generate_requests(self.state, self.call)
        num_choices = sum(r.sampling.n for r in requests)
        self.choices = [ChoiceText(i) for i in range(num_choices)]
        self.generation = Generation(self.state.backend, requests)
        await self.generation.start()

    async def respond(self, request: Request) -> Response:
        if self.call.is_stream:
            return EventStreamResponse(_sse(self), headers=SSE_HEADERS)
        return await _collect(self, request)

    async def events(self) -> AsyncIterator[tuple[ChoiceText, str, list, str | None]]:
        """(choice, new text, new logprobs, finish_reason) as the client should see them."""
        n = self.call.sampling.n
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
                metrics_for(self.state).ttft.labels(self.call.endpoint).observe(self.ttft_s)
            text, finish_reason = delta.text, delta.finish_reason
            if self._guards and text:
                text = await check_output(self._guards, self.call, delta.index, text)
                if text is None:
                    text, finish_reason = "", "content_filter"
            if finish_reason is not None and finish_reason != "content_filter" and self._flushers:
                tail, is_cut = await flush_output(self._flushers, self.call, delta.index)
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


async def _collect(run: GenerationRun, request: Request) -> JSONResponse:
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
    return JSONResponse(run.fmt.response(run.choices, run.usage()))


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
                pending += _frame(fmt.delta_chunk(choice.index, text, logprobs, finish_reason))
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
