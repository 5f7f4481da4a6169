"""The gateway's inference hook for limits and the usage ledger.

`MeteringHook.admit_request` takes the call's concurrency slot and rpm count
before its prompt is read; `admit_tokens` admits its worst-case token count
(prompt + n × max_tokens) against tpm and the monthly budget once it is
tokenised; `finish` — which the pipeline calls once for every call, also after
errors, 429s and disconnects — gives the slot back, settles the limiter to the
tokens actually used and queues one ledger row.

Status of the row: `ok`; `disconnected` when the client went away;
`cancelled` when the engine aborted a choice (finish_reason "abort", e.g. at
shutdown) or the server cancelled the call before it completed; `error` for
any error status, 429s included (the HTTP status and error code are kept).
Tokens are what the outcome says the backend read and produced: a request
refused before the backend answered (limits, guard, validation) is a row with
zero tokens. Every inference endpoint, embeddings included, reaches these two
methods through the one path in `ownllm.api.inference`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from ownllm.gateway.cost import CostError, load_price_table
from ownllm.gateway.hooks import InferenceCall, InferenceHook, InferenceOutcome
from ownllm.gateway.limits import Admission, Limiter
from ownllm.gateway.routing import Router
from ownllm.gateway.usage import BusySample, UsageLedger, UsageRow

log = logging.getLogger("ownllm.gateway")

BUSY_SAMPLE_EVERY_S = 10.0


def outcome_status(outcome: InferenceOutcome) -> str:
    if outcome.is_client_gone:
        return "disconnected"
    if any(c.finish_reason == "abort" for c in outcome.choices):
        return "cancelled"  # the engine aborted it (shutdown), whatever status was sent
    if outcome.status_code >= 400:
        return "error"
    if not outcome.is_complete:
        return "cancelled"  # the server task was cancelled before the call completed
    return "ok"


class BusyTracker:
    """Turns the engine's cumulative `busy_seconds` into samples the ledger adds up per
    host and day (`engine_time`), which `ownllm cost` reads as utilisation."""

    def __init__(self, backend: Callable[[], Any], replica: str | None = None) -> None:
        self._backend = backend
        self.replica = replica or socket.gethostname()[:128]
        self._last_busy = 0.0
        self._last_at = 0.0

    def take(self, force: bool = False) -> BusySample | None:
        now = time.monotonic()
        if not force and now - self._last_at < BUSY_SAMPLE_EVERY_S:
            return None
        backend = self._backend()
        busy = backend.stats().busy_seconds if backend is not None else 0.0
        self._last_at = now
        delta, self._last_busy = busy - self._last_busy, busy
        if delta < 0:  # the engine restarted: its counter began again at 0
            delta = busy
        return BusySample(self.replica, delta) if delta > 0 else None


class RemotePrices:
    """Which replica behind a router answered a call, and a remote's price for it: the
    call's tokens at the price table's entry for the remote's `priced_as` model (else the
    model the client named). A remote model without an entry is logged once and left
    unpriced (NULL), never guessed."""

    def __init__(self, backend: Callable[[], Any], price_table: str = "") -> None:
        self._backend = backend
        self._price_table = price_table
        self._prices: dict[str, Any] | None = None
        self._unpriced: set[str] = set()

    def of(
        self, call: InferenceCall, prompt: int, completion: int
    ) -> tuple[str | None, float | None]:
        router = self._backend()
        if not isinstance(router, Router) or not call.prompt_token_ids:
            return None, False, None
        n = len(call.prompt_token_ids)
        ids = [call.request_id] if n == 1 else [f"{call.request_id}-{k}" for k in range(n)]
        replicas = [r for r in map(router.served_by, ids) if r is not None]
        if not replicas:
            return None, False, None
        replica = replicas[0]
        if not replica.is_remote:
            return replica.name, False, None
        model = replica.priced_as or call.model
        price = self._table().get(model)
        if price is None:
            if model not in self._unpriced:
                self._unpriced.add(model)
                log.warning("remote %s: no price for %r in the price table", replica.name, model)
            return replica.name, True, None
        return replica.name, True, price.cost(prompt, completion)

    def _table(self) -> dict[str, Any]:
        if self._prices is None:
            try:
                table = load_price_table(self._price_table)
                self._prices = {api.name: api for api in table.apis}
            except CostError as e:
                log.warning("remote spend is not priced: %s", e)
                self._prices = {}
        return self._prices


class MeteringHook(InferenceHook):
    """Limits at admission, ledger row and limiter settlement at the end."""

    def __init__(
        self,
        limiter: Limiter,
        ledger: UsageLedger,
        busy: BusyTracker | None = None,
        remote_prices: RemotePrices | None = None,
    ) -> None:
        self.limiter = limiter
        self.ledger = ledger
        self.busy = busy
        self.remote_prices = remote_prices
        self._admissions: dict[str, Admission] = {}

    async def admit_request(self, call: InferenceCall) -> None:
        self._admissions[call.request_id] = self.limiter.admit_request(call.principal)

    async def admit_tokens(self, call: InferenceCall) -> None:
        admission = self._admissions.get(call.request_id)
        if admission is not None:
            await self.limiter.admit_tokens(admission, call.max_total_tokens)

    async def finish(self, call: InferenceCall, outcome: InferenceOutcome) -> None:
        # A request refused by a limit, a guard or a validation error was never read by the
        # backend: its outcome counts no tokens, so it costs nothing.
        prompt, cached = outcome.num_prompt_tokens, outcome.num_cached_tokens
        used = prompt + outcome.num_output_tokens
        admission = self._admissions.pop(call.request_id, None)
        backend, is_remote, remote_cost = None, False, None
        if self.remote_prices is not None:
            backend, is_remote, remote_cost = self.remote_prices.of(
                call, prompt, outcome.num_output_tokens
            )
        try:
            if admission is not None:
                await self.limiter.finish(admission, used)
        finally:
            self.ledger.record(
                UsageRow(
                    request_id=call.request_id,
                    tenant_id=call.principal.tenant_id,
                    key_id=call.principal.key_id,
                    endpoint=call.endpoint,
                    model=call.model,
                    adapter_id=call.adapter_ids[0][:64] if call.adapter_ids else None,
                    status=outcome_status(outcome),
                    prompt_tokens=prompt,
                    completion_tokens=outcome.num_output_tokens,
                    cached_tokens=cached,
                    ttft_ms=None if outcome.ttft_s is None else outcome.ttft_s * 1000.0,
                    latency_ms=outcome.latency_s * 1000.0,
                    http_status=outcome.status_code,
                    error_code=outcome.error_code,
                    batch_id=call.batch_id,
                    backend=backend,
                    remote=is_remote,
                    remote_cost_usd=remote_cost,
                )
            )
            sample = self.busy.take() if self.busy is not None else None
            if sample is not None:
                self.ledger.record(sample)

    def close(self) -> None:
        """At shutdown: the last busy-time sample and the budget leases, then every queued
        row to the database."""
        sample = self.busy.take(force=True) if self.busy is not None else None
        if sample is not None:
            self.ledger.record(sample)
        self.limiter.close()  # leases of monthly budgets go back with the last batch
        self.ledger.close()
