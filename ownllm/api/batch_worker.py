"""The batch worker inside `ownllm serve`: it answers `/v1/batches` lines on this server's
backend, at batch priority, through the same inference path as a live request.

Each line is parsed with its endpoint's request schema, built into the endpoint's `Run`
(`chat_run`, `completion_run`, `embedding_run`: what the routes build) and handed to
`serve` (`ownllm.api.inference`; `response_run` for `/v1/responses`): the batch owner's principal, the gateway's limits,
guardrails, ledger (the row names the batch) and capture, exactly as for a live call.
Its `GenerateRequest`s carry `PRIORITY_BATCH`, so the engine serves interactive rows
first. The batch pool: a line is held to the owner's monthly budgets, not to its per-minute
limits, which pace interactive clients; at most `batch.max_concurrent_lines` run at once.

The worker claims lines and batches through `ownllm.batches.store` (leases renewed every
quarter of `batch.lease_s`), so several servers share one batch and a server killed
mid-batch loses nothing: another takes its lines when their leases end. An engine that is
full (503) or shutting down hands a line back unanswered; any other error is the line's
answer (its status and OpenAI error body), as a live client would have seen it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ownllm import ids
from ownllm.api.errors import error_body, validation_message
from ownllm.api.inference import Run, serve
from ownllm.api.polling import PollingWorker
from ownllm.api.response_run import ResponseRun, response_run
from ownllm.api.response_schemas import ResponseRequest
from ownllm.api.routes.chat import chat_run
from ownllm.api.routes.completions import completion_run
from ownllm.api.routes.embeddings import embedding_run
from ownllm.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from ownllm.api.state import AppState
from ownllm.batches import output, store
from ownllm.batches.input import InputErrors, read_lines
from ownllm.errors import AuthenticationError, OverloadedError, OwnLLMError, ServerError
from ownllm.gateway.gateway import Gateway
from ownllm.gateway.principal import ADMIN_TENANT, ALL_SCOPES, Limits, Principal
from ownllm.ids import new_id
from ownllm.store.schema import ApiKey, Batch, BatchLine, File, Tenant

log = logging.getLogger("ownllm.batches")


def _sync(build: Callable[..., Run]) -> Callable[..., Awaitable[Run]]:
    async def build_run(*args: Any) -> Run:
        return build(*args)

    return build_run


# url -> (request schema, the route's run builder: (state, gateway, principal, body) -> Run)
ENDPOINT_RUNS: dict[str, tuple[type[BaseModel], Callable[..., Awaitable[Run]]]] = {
    "/v1/chat/completions": (ChatCompletionRequest, _sync(chat_run)),
    "/v1/completions": (CompletionRequest, _sync(completion_run)),
    "/v1/embeddings": (EmbeddingRequest, _sync(embedding_run)),
    "/v1/responses": (ResponseRequest, response_run),
}
PRINCIPAL_TTL_S = 30.0  # a revoked key stops its batches within this
OVERLOADED_BACKOFF_S = 0.5


class NeverGone:
    """The request a batch line answers: its client never hangs up."""

    async def is_disconnected(self) -> bool:
        return False


def check_body(url: str, body: dict) -> tuple[str, str | None] | None:
    """None when the endpoint's schema takes `body`, else (message, param)."""
    schema, _ = ENDPOINT_RUNS[url]
    try:
        schema.model_validate(body)
    except ValidationError as e:
        return validation_message(RequestValidationError(e.errors()))
    return None


def read_input(path: Any, endpoint: str, max_lines: int):
    with open(path, "rb") as f:
        return read_lines(f, endpoint, check_body, max_lines, endpoints=tuple(ENDPOINT_RUNS))


class BatchWorker(PollingWorker):
    """Claims batch work for this server and runs it; `start` at app start, `stop` at
    shutdown (running lines are handed back). `drain` runs until no work is left (tests,
    `ownllm batch run`)."""

    name = "batch-worker"

    def __init__(self, state: AppState, gateway: Gateway, worker_id: str | None = None) -> None:
        self.state, self.gateway, self.db = state, gateway, state.db
        self.config = state.config.batch
        self.max_lines = self.config.max_concurrent_lines or state.config.engine.max_num_seqs
        super().__init__(self.config.poll_interval_s)
        self.worker_id = worker_id or ids.worker_id()
        self._principals: dict[str, tuple[float, Principal | OwnLLMError]] = {}
        self._renewed_at = 0.0
        self._backoff_until = 0.0

    def start(self) -> None:
        super().start()
        log.debug("batch worker %s ready (%d lines at once)", self.worker_id, self.max_lines)

    async def step(self) -> bool:
        """One look for work: take open lines, tend a batch (after the lines: taking them
        fails those lost too often, which may leave it ready to finalize), renew leases.
        True when it found something to do."""
        has_worked = await self._take_lines()
        has_worked |= await self._tend_batch()
        if time.monotonic() - self._renewed_at > self.config.lease_s / 4:
            self._renewed_at = time.monotonic()
            ids = list(self.running)
            await asyncio.to_thread(store.renew, self.db, self.worker_id, ids, self.config.lease_s)
        return has_worked

    # -- batches: validate, expire, finalize ----------------------------------------------

    async def _tend_batch(self) -> bool:
        lease = self.config.lease_s
        batch = await asyncio.to_thread(store.claim_batch, self.db, self.worker_id, lease)
        if batch is None:
            return False
        try:
            if batch.status == "validating":
                await asyncio.to_thread(self._validate, batch)
                return True
            return await asyncio.to_thread(self._finalize, batch)
        finally:
            await asyncio.to_thread(store.release_batch, self.db, batch.id, self.worker_id)

    def _validate(self, batch: Batch) -> None:
        with self.db.session() as s:
            file = s.get(File, batch.input_file_id)
        errors = None
        if file is None:
            errors = [_error("file_not_found", f"File {batch.input_file_id} no longer exists.")]
        elif file.bytes > self.config.max_file_bytes:
            errors = [
                _error(
                    "file_too_large",
                    f"The input file has {file.bytes:,} bytes; a batch takes at most "
                    f"{self.config.max_file_bytes:,} (setting batch.max_file_bytes).",
                )
            ]
        else:
            try:
                path = self.state.data_dir.resolve(file.path)
                lines = read_input(path, batch.endpoint, self.config.max_lines)
            except InputErrors as e:
                errors = [x.to_dict() for x in e.errors]
        if errors is not None:
            store.finish(self.db, batch.id, self.worker_id, "failed", errors=errors)
            return
        if not store.start(self.db, batch, self.worker_id, lines):
            return  # cancelled meanwhile: it ends as cancelled, with no line
        log.info("batch %s: %d lines in progress", batch.id, len(lines))

    def _finalize(self, batch: Batch) -> bool:
        """Expire what the window left open, then end the batch once no line is open;
        False while lines still run elsewhere."""
        if batch.status == "in_progress" and batch.expires_at < time.time():
            store.expire_open_lines(self.db, batch.id)
        counts = store.counts(self.db, [batch])[batch.id]
        with self.db.session() as s:
            num_open = (
                s.query(BatchLine)
                .filter(BatchLine.batch_id == batch.id, BatchLine.status.in_(store.OPEN))
                .count()
            )
            num_expired = (
                s.query(BatchLine)
                .filter(BatchLine.batch_id == batch.id, BatchLine.status == "expired")
                .count()
            )
        if num_open:
            return False  # lines still running under live leases: look again later
        if batch.status == "cancelling":
            final = "cancelled"
        elif num_expired:
            final = "expired"
        else:
            final = "completed"
            store.set_finalizing(self.db, batch.id, self.worker_id)
        files = output.write_results(self.db, self.state.data_dir, batch)
        if store.finish(self.db, batch.id, self.worker_id, final, **files):
            log.info("batch %s %s: %s", batch.id, final, counts.to_dict())
        return True

    # -- lines --------------------------------------------------------------------------------

    async def _take_lines(self) -> bool:
        free = self.max_lines - len(self.running)
        if free <= 0 or time.monotonic() < self._backoff_until:
            return False
        cfg = self.config
        lines = await asyncio.to_thread(
            store.claim_lines, self.db, self.worker_id, free, cfg.lease_s, cfg.max_attempts
        )
        for line in lines:
            self.running[line.id] = asyncio.create_task(self._run_line(line))
        return bool(lines)

    async def _run_line(self, line: BatchLine) -> None:
        try:
            status, result = await self.answer(line)
            await asyncio.to_thread(store.record, self.db, line.id, self.worker_id, status, result)
        except (OverloadedError, asyncio.CancelledError) as e:
            if isinstance(e, OverloadedError):
                self._backoff_until = time.monotonic() + OVERLOADED_BACKOFF_S
            await asyncio.shield(asyncio.to_thread(store.release, self.db, line.id, self.worker_id))
            if isinstance(e, asyncio.CancelledError):
                raise
        except Exception:
            log.exception("batch line %s of %s failed", line.line, line.batch_id)
        finally:
            self.running.pop(line.id, None)
            self._wake.set()

    async def answer(self, line: BatchLine) -> tuple[str, dict]:
        """Run one line through the inference path: (line status, its output line).
        Raises OverloadedError when the engine could not take it now."""
        batch = await asyncio.to_thread(store.batch_by_id, self.db, line.batch_id)
        schema, make_run = ENDPOINT_RUNS[batch.endpoint]
        request_id, run = new_id("req"), None
        try:
            principal = await self._principal(batch)
            body = schema.model_validate(line.body)
            run = await make_run(self.state, self.gateway, principal, body)
            run.call.batch_id = batch.id
            request_id = run.call.request_id
            response = await serve(run, NeverGone())
            status_code, body = response.status_code, json.loads(response.body)
        except OverloadedError:
            raise
        except ValidationError as e:
            message, param = validation_message(RequestValidationError(e.errors()))
            status_code = 400
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": param,
                    "code": "invalid_value",
                }
            }
        except OwnLLMError as e:
            if isinstance(run, ResponseRun):
                e.param = run.rc.param(e.param)  # the Responses field, as its route says
            status_code, body = e.status_code, error_body(e)
        except Exception as e:
            log.error("batch line %s of %s failed", line.line, batch.id, exc_info=e)
            error = ServerError("The server had an error while processing your request.")
            status_code, body = error.status_code, error_body(error)
        response = {"status_code": status_code, "request_id": request_id, "body": body}
        status = "done" if status_code < 300 else "failed"
        return status, store.result_line(line, response, None)

    async def _principal(self, batch: Batch) -> Principal:
        """Who the batch's lines run as: its creator's key and tenant as they are now."""
        cached = self._principals.get(batch.id)
        if cached is None or time.monotonic() - cached[0] > PRINCIPAL_TTL_S:
            found = await asyncio.to_thread(batch_principal, self.db, batch)
            cached = self._principals[batch.id] = (time.monotonic(), found)
        if isinstance(cached[1], OwnLLMError):
            raise cached[1]
        return cached[1]


def batch_principal(db: Any, batch: Batch) -> Principal | OwnLLMError:
    """The principal of the batch's key (the admin for the admin key and open mode), with
    the batch pool's limits: the key's and tenant's monthly budgets only. A key revoked
    or deleted since is an AuthenticationError for the lines not yet run."""
    if batch.tenant_id == ADMIN_TENANT:
        return Principal(tenant_id=ADMIN_TENANT, key_id=batch.key_id, is_admin=True)
    with db.session() as s:
        key = s.get(ApiKey, batch.key_id) if batch.key_id else None
        tenant = s.get(Tenant, batch.tenant_id)
    if key is None or key.revoked_at is not None or tenant is None:
        return AuthenticationError("The API key that created this batch has been revoked.")
    return Principal(
        tenant_id=batch.tenant_id,
        key_id=key.id,
        scopes=frozenset(key.scopes or ()) & ALL_SCOPES,
        key_limits=Limits(monthly_tokens=key.monthly_tokens),
        tenant_limits=Limits(monthly_tokens=tenant.monthly_tokens),
        capture_default=(
            key.capture_default
            if key.capture_default is not None
            else (True if tenant.capture_default else None)
        ),
        is_from_key_row=True,
    )


def _error(code: str, message: str) -> dict:
    return {"code": code, "message": message, "param": None, "line": None}
