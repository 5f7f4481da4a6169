"""The one path every inference call takes, whatever its endpoint:

    origin (`ownllm.api.origin`) → bodies (key and body size, `ownllm.api.bodies`)
    → parse (pydantic) and build the call (model, texts, parameters) in the route
    → admit_request (rpm, concurrency) → the text bound (a cap on characters)
    → tokenise (or count: `Run.prepare`; long texts off the event loop, the context checked)
    → admit_tokens (tpm, monthly budget on the real count)
    → guard (input; prepare again when it changed the text)
    → backend (`Run.start`) → respond (JSON or SSE; output guard per delta)
    → finish (usage ledger, guard events, capture, metrics: exactly once, whatever happened)

A call that cannot leave the premises (`Run.submits_during_guard`: no `remote = true`
backend may take it, and `guard.during_call` is on, the default) is submitted to the
backend before the input guard runs, so the guard's time overlaps the backend's
(LiteLLM's "during_call" guardrail): a block aborts the backend's request before anything
of it reached the client, and a redaction aborts it and submits the changed text. A call
that may leave, or any call with `guard.during_call = false`, waits for the guard before
anything is sent.

`serve(run, request)` runs it. A `Run` subclass says what one endpoint does at `prepare`,
`start` and `respond` and what its outcome counted: `GenerationRun`
(`ownllm.api.generation`) for chat and completions, `EmbeddingRun` in the embeddings
route. Admission, the guard, the error shape and `finish` happen only here, so no endpoint
can skip them (tests/api/test_inference_routes.py walks the app's routes to prove it).

Nothing costly happens before `admit_request`: a key over its rate gets its 429 however
large its prompt, and a prompt that cannot fit is refused by its characters before the
tokenizer reads it.

The gateway stages are the methods of the app's `Gateway` (`ownllm.gateway.gateway`),
which calls its hooks (`ownllm.gateway.hooks`) in order, so limits, guardrails, usage and
capture plug in without touching the routes. The request metrics are the api's own
(`ownllm.api.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import Response

from ownllm.api.errors import error_body
from ownllm.api.metrics import Metrics
from ownllm.errors import InvalidRequestError, OwnLLMError, ServerError
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.hooks import InferenceCall, InferenceOutcome

log = logging.getLogger("ownllm.api")

# Text of one request, whatever the model: beyond a 128k-token context of ordinary text
# (~4 characters a token), and still a few seconds of tokeniser time in a worker thread.
MAX_REQUEST_CHARS = 1 << 22


def check_text_size(call: InferenceCall) -> None:
    """At most MAX_REQUEST_CHARS characters of text per request (400, as OpenAI words its
    own cap), checked before the text is read."""
    num_chars = call.num_text_chars
    if num_chars > MAX_REQUEST_CHARS:
        param = call.text_param
        raise InvalidRequestError(
            f"Invalid '{param}': text too long. Expected at most {MAX_REQUEST_CHARS} "
            f"characters per request, but got {num_chars} instead.",
            param=param,
            code="string_above_max_length",
        )


class Run:
    """One inference call on the path: its status so far and its single `finish`.

    A subclass implements `prepare` (fill `call.prompt_token_ids`, raise a 400 naming the
    param), `start` (hand the admitted call to the backend) and `respond` (the HTTP
    response; it must end in `close`, at once or when a stream ends), and extends `outcome`
    with what its backend counted and `release` with what to abort."""

    def __init__(self, call: InferenceCall, gateway: Gateway, metrics: Metrics) -> None:
        self.call = call
        self.gateway = gateway
        self.metrics = metrics
        self.status_code = 200
        self.error_code: str | None = None
        self.is_client_gone = False
        self._finished = False

    async def prepare(self) -> None:
        raise NotImplementedError

    def submits_during_guard(self) -> bool:
        """Whether the call is submitted before the input guard runs (no backend off the
        premises may take it, and `guard.during_call`); by default the guard comes first."""
        return False

    async def submit(self) -> None:
        """Hand the prepared call to the backend without waiting for it (`start` waits)."""

    async def withdraw(self) -> None:
        """Abort what `submit` handed to the backend, to submit the call again."""
        await self.release()

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
        """Release the backend, then finish: metrics and the gateway's `finish` (once;
        shielded from cancel)."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            await self.release()
            outcome = self.outcome()
            self._count(outcome)
            await self.gateway.finish(self.call, outcome)
            self.metrics.in_progress.labels(self.call.endpoint).dec()

    def _count(self, outcome: InferenceOutcome) -> None:
        metrics, endpoint = self.metrics, self.call.endpoint
        metrics.requests.labels(endpoint, str(outcome.status_code)).inc()
        metrics.prompt_tokens.labels(endpoint).inc(outcome.num_prompt_tokens)
        metrics.output_tokens.labels(endpoint).inc(outcome.num_output_tokens)
        metrics.latency.labels(endpoint).observe(outcome.latency_s)
        for choice in outcome.choices:
            reason = choice.finish_reason or ("client_gone" if outcome.is_client_gone else "error")
            metrics.finished.labels(endpoint, reason).inc()


async def serve(run: Run, request: Request) -> Response:
    """Run one call through the gateway stages and its backend: the one path of every
    inference endpoint."""
    call, gateway = run.call, run.gateway
    run.metrics.in_progress.labels(call.endpoint).inc()
    try:
        await gateway.admit_request(call)
        check_text_size(call)
        await run.prepare()
        await gateway.admit_tokens(call)
        if run.submits_during_guard():
            await run.submit()
            await _let_backend_send()
        if await gateway.check_input(call):
            await run.withdraw()  # what was sent before a redaction
            await run.prepare()
        await run.start()
        return await run.respond(request)
    except BaseException as e:
        if isinstance(e, Exception):
            run.fail(e)
        await run.close()  # a stream still running closes itself when it ends
        raise


async def _let_backend_send() -> None:
    """Two passes of the event loop, so the backend's task has sent its request before the
    guard takes the loop (an HTTP backend's client writes the body from a task of its own;
    a pass that finds nothing to run costs microseconds)."""
    for _ in range(2):
        await asyncio.sleep(0)
