"""The Router: one `Backend` over many replicas, so the api layer sees a single engine.

`generate(request)`:
1. candidates: the replicas the hybrid policy allows for (tenant, model)
   (`ownllm.gateway.routing.policy`); a `remote = true` replica only through a policy that
   names it. Of those, the ones whose circuit lets a request through
   (`ownllm.gateway.routing.health`) and whose last health check passed.
2. pick one by the configured strategy (`ownllm.gateway.routing.scoring`); remember the
   prompt's prefix blocks (chained from the tenant and the adapter set, which key a
   replica's KV cache) and the adapter set on it, and count the prompt tokens it was not
   thought to hold in its prefill backlog until the first token (`started`). An answered
   request (`finished`) counts as an open conversation on its replica until its next turn
   arrives (`ownllm.gateway.routing.conversations`; `conversations = false`: not kept).
3. stream its deltas. A failure before the first delta (connection refused, 5xx, queue
   full) is retried on another replica, up to `max_attempts` replicas in all; an error
   that is the request's own (400, 404) is raised as it is. A failure after the first delta
   raises `ReplicaFailedError` (502): the api ends the stream with an error event and the
   ledger row says `error`, never a silent truncation.

A background task checks every replica's health and reads its load (`backend.stats()`:
a vllm or openai backend's last scrape of its server's Prometheus metrics, the embedded
engine's own counters) every `health_interval_s`, each check bounded by
`health_timeout_s`; `check_now()` runs one round, which is what tests call. `/ready` reads
`replica_states()`, `/metrics` each replica's counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ownllm.backends.base import Backend, Delta, EngineStats, GenerateRequest, ModelInfo
from ownllm.config import RoutingConfig
from ownllm.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    OverloadedError,
    OwnLLMError,
    PermissionDeniedError,
    ReplicaFailedError,
)
from ownllm.gateway.routing.conversations import OpenConversations
from ownllm.gateway.routing.health import CLOSED, OPEN, CircuitBreaker
from ownllm.gateway.routing.policy import PolicyTable
from ownllm.gateway.routing.prefix import AdapterIndex, PrefixIndex, prefix_hashes
from ownllm.gateway.routing.scoring import ReplicaView, Weights, choose

log = logging.getLogger("ownllm.routing")

MAX_REMEMBERED = 100_000  # answered requests whose replica the ledger has not asked for yet

# Errors that are the request's own: another replica would answer the same.
REQUEST_ERRORS = (InvalidRequestError, NotFoundError, PermissionDeniedError)


@dataclass
class Replica:
    """One backend behind the router, and what the router knows of it."""

    name: str
    backend: Backend
    is_remote: bool = False
    priced_as: str = ""  # a remote's model id in the price table (default: the client's)
    view: ReplicaView = field(init=False)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    is_up: bool = True  # the last health check passed
    num_routed: int = 0
    num_retried: int = 0  # requests that failed here before their first token, tried elsewhere
    num_failed: int = 0  # requests that failed here (before or after their first token)
    num_adapter_hits: int = 0
    num_prefix_hits: int = 0  # requests routed here for a prefix it holds
    num_prefix_blocks_hit: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.view = ReplicaView(self.name, PrefixIndex(1), AdapterIndex(1))

    @property
    def state(self) -> str:
        """healthy | circuit_open | down, as /ready shows it."""
        if not self.is_up:
            return "down"
        return "healthy" if self.breaker.state == CLOSED else "circuit_open"


class Router:
    """A `Backend` that routes each request to one of `replicas` (see the module docstring)."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        config: RoutingConfig,
        *,
        tokenizer: Any = None,
        model_info: ModelInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a router needs at least one replica")
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique: {names}")
        self.replicas = list(replicas)
        self.config = config
        self.tokenizer = tokenizer
        self.weights = Weights(
            config.adapter_weight,
            config.prefix_weight,
            config.queue_weight,
            config.kv_weight,
            config.queue_scale,
            config.load_factor,
            config.load_slack,
            config.prefill_slack,
            config.adapter_wait_tokens,
            config.own_prefill,
            config.adapter_wait_load,
            config.adapter_wait_replicas,
        )
        self.policies = PolicyTable(config.policy, [r.name for r in replicas if r.is_remote])
        self._routed = self.policies.routed_models()
        for r in self.replicas:
            r.view = ReplicaView(
                r.name, PrefixIndex(config.prefix_index_blocks), AdapterIndex(config.adapter_slots)
            )
            r.breaker = CircuitBreaker(config.failure_threshold, config.cooldown_s)
        local = [r for r in self.replicas if not r.is_remote]
        self._model_info = model_info or (local or self.replicas)[0].backend.model_info
        self._clock = clock
        self._turn = 0
        self._where: dict[str, Replica] = {}  # request id -> the replica running it
        # request id -> (its replica, prompt tokens counted in view.num_prefill_tokens)
        self._prefilling: dict[str, tuple[Replica, int]] = {}
        # request id -> the replica that answered it, until the ledger asks (`served_by`)
        self._served: OrderedDict[str, Replica] = OrderedDict()
        views = [r.view for r in self.replicas]
        self._conversations = (
            OpenConversations(views, config.conversation_think_s) if config.conversations else None
        )
        # request id -> (its prompt's last block, its replica), until it is answered
        self._answering: dict[str, tuple[int, Replica]] = {}
        self._health_task: asyncio.Task | None = None

    # -- the Backend protocol ------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    @property
    def conversations(self) -> OpenConversations | None:
        """The open conversations counted, decayed to now (None: `conversations = false`)."""
        if self._conversations is not None:
            self._conversations.age(self._clock())
        return self._conversations

    @property
    def uses_token_constraints(self) -> bool:
        """Whether the caller should build the local constraint: some replica decodes with
        it (one that forwards response_format to its server ignores it)."""
        return any(r.backend.uses_token_constraints for r in self.replicas)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        self._check_model(request)
        tried: list[Replica] = []
        last_error: BaseException | None = None
        for _ in range(self.config.max_attempts):
            replica = self.route(request, tried)
            if replica is None:
                break
            tried.append(replica)
            is_started = False
            stream = replica.backend.generate(request)
            replica.view.num_in_flight += 1
            self._where[request.request_id] = replica
            try:
                async for delta in stream:
                    if not is_started:
                        is_started = True
                        self.started(request.request_id)
                        replica.breaker.record_success()
                        self._remember(request.request_id, replica)
                    yield delta
                self.finished(request.request_id)
                return
            except REQUEST_ERRORS:
                if not is_started:
                    replica.breaker.record_success()  # it answered, and rightly
                raise
            except Exception as e:
                replica.num_failed += 1
                replica.last_error = _describe(e)
                if not isinstance(e, OverloadedError):  # a full queue is not a broken replica
                    replica.breaker.record_failure(self._clock())
                if is_started:
                    log.warning("replica %s failed mid-stream: %s", replica.name, _describe(e))
                    raise ReplicaFailedError(
                        f"the model server failed after the answer began ({replica.last_error}); "
                        "the answer is incomplete: retry the request"
                    ) from e
                log.info("replica %s failed before the first token: %s", replica.name, _describe(e))
                replica.num_retried += 1
                last_error = e
            finally:
                self.started(request.request_id)  # (failed or cancelled before it began)
                self._answering.pop(request.request_id, None)
                replica.view.num_in_flight -= 1
                if self._where.get(request.request_id) is replica:
                    del self._where[request.request_id]
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()  # the replica aborts what it still runs
        raise _unavailable(request, tried, last_error)

    async def abort(self, request_id: str) -> None:
        replica = self._where.get(request_id)
        if replica is not None:
            await replica.backend.abort(request_id)

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        await self._on_local(lambda b: b.load_adapter(adapter_id, path), f"load {adapter_id}")

    async def unload_adapter(self, adapter_id: str) -> None:
        """Unloaded everywhere (an unregistered adapter runs nowhere)."""
        for r in self.replicas:
            r.view.adapters.discard_adapter(adapter_id)
        await self._on_local(lambda b: b.unload_adapter(adapter_id), f"unload {adapter_id}")

    async def health(self) -> bool:
        """Ready when some local replica (or, with none configured, some replica) is healthy."""
        local = [r for r in self.replicas if not r.is_remote] or self.replicas
        return any(r.state == "healthy" for r in local)

    def stats(self) -> EngineStats:
        """The local replicas' stats added up: the fleet's queue, batch and KV cache."""
        total = {f.name: 0 for f in fields(EngineStats)}
        for r in self.replicas:
            if r.is_remote:
                continue
            stats = r.backend.stats()
            for name in total:
                total[name] += getattr(stats, name)
        return EngineStats(**total)

    async def start(self) -> None:
        """Start every replica at once (a managed vLLM server takes minutes), then the
        health checks."""
        await asyncio.gather(*(r.backend.start() for r in self.replicas))
        self._health_task = asyncio.create_task(self._health_loop())

    async def shutdown(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
            self._health_task = None
        for r in self.replicas:
            try:
                await r.backend.shutdown()
            except Exception:
                log.exception("replica %s did not shut down cleanly", r.name)

    # -- picking -------------------------------------------------------------------------------

    def candidates(self, tenant: str, model: str, exclude: Sequence[Replica] = ()) -> list[Replica]:
        """The replicas a request of `tenant` for `model` may go to now, by its policy."""
        policy = self.policies.lookup(tenant, model)
        now = self._clock()

        def usable(rs):
            return [r for r in rs if r not in exclude and r.is_up and r.breaker.would_allow(now)]

        local = usable(r for r in self.replicas if not r.is_remote)
        if policy.mode == "local_only":
            return local
        remote = usable(r for r in self.replicas if r.name == policy.remote)
        if policy.mode == "route":
            return remote
        if policy.mode == "fallback":
            return local or remote
        # overflow: every local replica at the threshold (or none left)
        if not local or min(r.view.load for r in local) >= policy.queue_threshold:
            return remote or local
        return local

    def running_on(self, request_id: str) -> str | None:
        """The name of the replica running `request_id` now (None: not running here)."""
        replica = self._where.get(request_id)
        return None if replica is None else replica.name

    def served_by(self, request_id: str) -> Replica | None:
        """The replica that answered `request_id` (forgotten once asked)."""
        return self._served.pop(request_id, None)

    def _remember(self, request_id: str, replica: Replica) -> None:
        self._served[request_id] = replica
        while len(self._served) > MAX_REMEMBERED:  # nobody asked (no ledger): bounded
            self._served.popitem(last=False)

    def may_leave_premises(self, tenant_id: str, model: str) -> bool:
        """Whether the tenant's policy for `model` lets a request go to a remote replica
        (any mode but local_only: `candidates` never offers one to local_only)."""
        return self.policies.lookup(tenant_id, model).mode != "local_only"

    def routes_remotely(self, tenant: str, model: str) -> bool:
        """Whether `model` is one this tenant's policy serves only on a remote (`route`)."""
        return model in self._routed and self.policies.lookup(tenant, model).mode == "route"

    def _check_model(self, request: GenerateRequest) -> None:
        """A model served only remotely exists for the tenants whose policy routes it."""
        model = request.model
        if (
            model in self._routed
            and self.policies.lookup(request.cache_scope, model).mode != "route"
        ):
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
            )

    def route(self, request: GenerateRequest, tried: Sequence[Replica] = ()) -> Replica | None:
        """The replica for `request` (None: no candidate left besides `tried`), its prefix
        blocks and adapter set remembered there. Synchronous: bench/routing_sim.py calls it."""
        model = request.model or self._model_info.id
        while True:
            options = self.candidates(request.cache_scope, model, tried)
            if not options:
                return None
            adapter_key = tuple(a.adapter_id for a in request.adapters)
            hashes = prefix_hashes(
                cache_scope(request.cache_scope, adapter_key),
                request.prompt_token_ids,
                self.config.prefix_block_tokens,
            )
            if self._conversations is not None:
                self._conversations.continued(hashes, self._clock())
            views = [r.view for r in options]
            choice = choose(
                views, adapter_key, hashes, strategy=self.config.strategy,
                weights=self.weights, turn=self._turn,
                block_tokens=self.config.prefix_block_tokens,
            )  # fmt: skip
            self._turn += 1
            replica = options[choice.index]
            if not replica.breaker.allows(self._clock()):
                tried = [*tried, replica]  # its half-open probe was taken meanwhile
                continue
            replica.num_routed += 1
            replica.num_adapter_hits += choice.is_adapter_hit
            replica.num_prefix_hits += choice.num_prefix_blocks > 0
            replica.num_prefix_blocks_hit += choice.num_prefix_blocks
            replica.view.prefixes.add(hashes)
            replica.view.adapters.add(adapter_key)
            uncached = len(request.prompt_token_ids) - choice.num_prefix_blocks * (
                self.config.prefix_block_tokens
            )
            self.started(request.request_id)  # (a stale entry: request ids are unique)
            replica.view.num_prefill_tokens += uncached
            self._prefilling[request.request_id] = (replica, uncached)
            if self._conversations is not None and hashes:
                self._answering[request.request_id] = (hashes[-1], replica)
            return replica

    def started(self, request_id: str) -> None:
        """`request_id` has its first token (or failed before it): its prompt no longer
        counts in its replica's prefill backlog."""
        replica, uncached = self._prefilling.pop(request_id, (None, 0))
        if replica is not None:
            replica.view.num_prefill_tokens -= uncached

    def finished(self, request_id: str) -> None:
        """`request_id` was answered: its conversation is open on its replica until its next
        turn arrives (unless `conversations = false`)."""
        block, replica = self._answering.pop(request_id, (0, None))
        if replica is not None and self._conversations is not None:
            self._conversations.answered(replica.view, block, self._clock())

    # -- health --------------------------------------------------------------------------------

    async def check_now(self) -> None:
        """One round of health checks and load scrapes, every replica at once."""
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_now()
            except Exception:  # a bug here must not stop health checking for good
                log.exception("health check round failed")
            await asyncio.sleep(self.config.health_interval_s)

    async def _check(self, r: Replica) -> None:
        timeout = self.config.health_timeout_s
        try:
            is_ok = await asyncio.wait_for(r.backend.health(), timeout)
            if is_ok:
                stats = r.backend.stats()
                r.view.num_waiting, r.view.num_running = stats.waiting, stats.running
                total = stats.kv_blocks_total
                r.view.kv_usage = stats.kv_blocks_used / total if total else 0.0
        except Exception as e:
            is_ok = False
            r.last_error = _describe(e)
        if not is_ok:
            if r.is_up:
                log.warning("replica %s is down: %s", r.name, r.last_error or "health check failed")
            r.is_up = False
            r.breaker.record_failure(self._clock())
            return
        if not r.is_up:
            log.info("replica %s is back", r.name)
            r.view.prefixes.clear()  # it restarted: its caches are empty
            r.view.adapters.clear()
        r.is_up = True
        if r.breaker.state != CLOSED and r.breaker.would_allow(self._clock()):
            r.breaker.record_success()  # the health check was the half-open probe

    # -- what /ready and /metrics show ---------------------------------------------------------

    def replica_states(self) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "state": r.state,
                "remote": r.is_remote,
                "circuit": r.breaker.state,
                "in_flight": r.view.num_in_flight,
                "queued": r.view.num_waiting,
                "running": r.view.num_running,
                "kv_cache_usage": round(r.view.kv_usage, 4),
                **({"last_error": r.last_error} if r.state != "healthy" and r.last_error else {}),
            }
            for r in self.replicas
        ]

    async def _on_local(self, action: Callable[[Backend], Awaitable[None]], what: str) -> None:
        """`action` on every local replica at once; a replica that fails it is logged (a down
        replica starts empty when it comes back)."""
        local = [r for r in self.replicas if not r.is_remote]
        results = await asyncio.gather(*(action(r.backend) for r in local), return_exceptions=True)
        for r, result in zip(local, results):
            if isinstance(result, OwnLLMError):
                raise result
            if isinstance(result, Exception):
                log.warning("replica %s: %s failed: %s", r.name, what, _describe(result))


def cache_scope(tenant: str, adapter_key: tuple[str, ...]) -> str:
    """What a replica's prefix cache is keyed on: the tenant and the adapter set (the KV of
    a prompt differs per adapter), as the embedded engine's `cache_key` is."""
    return repr((tenant, adapter_key))


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _unavailable(
    request: GenerateRequest, tried: Sequence[Replica], error: BaseException | None
) -> OwnLLMError:
    if isinstance(error, OverloadedError) and len(tried) == 1:
        return error
    if not tried:
        return OverloadedError(
            "no healthy replica may serve this request now; retry shortly", retry_after=5,
            code="no_healthy_replica",
        )  # fmt: skip
    names = ", ".join(r.name for r in tried)
    return OverloadedError(
        f"every replica tried failed before answering ({names}); last error: "
        f"{_describe(error) if error else 'none'}; retry shortly",
        retry_after=5,
        code="no_healthy_replica",
    )


__all__ = ["OPEN", "Replica", "Router"]
