"""Prometheus metrics of one app: a per-app CollectorRegistry, no global state.

Request counters and histograms are updated by the inference pipeline, the one path of
every inference endpoint (embeddings included); engine gauges (queue depth, running requests, resident adapters, KV-cache blocks)
are read from `backend.stats()` at scrape time, so they are never stale.

Labels are bounded on purpose: `endpoint` (a handful of routes), `status` (HTTP codes
the API returns) and `finish_reason` (stop, length, content_filter, client_gone, error).
No model, adapter, tenant or user labels: those are unbounded and belong in the usage
ledger, not in a time series. Behind a router (`ownllm.gateway.routing`), each replica's
state, in-flight requests, routed requests, retries, failures and affinity hits carry a
`replica` label: the configured backend names, a bounded set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# backend.stats() field -> (metric name, help); other fields become ownllm_engine_<field>.
ENGINE_GAUGES = {
    "waiting": ("ownllm_queue_depth", "Requests waiting for an engine slot."),
    "running": ("ownllm_running_requests", "Sequences the engine is decoding now."),
    "resident_adapters": ("ownllm_resident_adapters", "LoRA adapters resident in slots."),
    "kv_blocks_used": ("ownllm_kv_cache_blocks_used", "KV-cache blocks in use."),
    "kv_blocks_total": ("ownllm_kv_cache_blocks_total", "KV-cache blocks in all."),
}


class _EngineCollector(Collector):
    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backend = self._state.backend
        stats = asdict(backend.stats()) if backend is not None else {}
        for key, (name, help_) in ENGINE_GAUGES.items():
            yield GaugeMetricFamily(name, help_, value=float(stats.pop(key, 0)))
        for key, value in stats.items():
            yield GaugeMetricFamily(f"ownllm_engine_{key}", f"Engine stat {key}.", value=value)


# Router counters per replica: Replica attribute -> (metric name, help)
ROUTING_COUNTERS = {
    "num_routed": ("ownllm_routed_requests", "Requests routed to the replica."),
    "num_retried": (
        "ownllm_routing_retries",
        "Requests that failed on the replica before their first token and were retried.",
    ),
    "num_failed": ("ownllm_replica_failures", "Requests that failed on the replica."),
    "num_adapter_hits": (
        "ownllm_routing_adapter_affinity_hits",
        "Requests routed to the replica where their adapter was resident.",
    ),
    "num_prefix_hits": (
        "ownllm_routing_prefix_affinity_hits",
        "Requests routed to the replica for a prompt prefix it holds.",
    ),
    "num_prefix_blocks_hit": (
        "ownllm_routing_prefix_blocks_hit",
        "Prompt blocks the replica held for the requests routed to it.",
    ),
}
REPLICA_STATES = ("healthy", "circuit_open", "down")


class _RoutingCollector(Collector):
    """Per-replica state and counters of a Router backend (labels: the configured replica
    names, a bounded set)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from ownllm.gateway.routing import Router

        router = self._state.backend
        if not isinstance(router, Router):
            return
        states = GaugeMetricFamily(
            "ownllm_replica_state",
            "1 for the replica's current state.",
            labels=["replica", "state"],
        )
        in_flight = GaugeMetricFamily(
            "ownllm_replica_in_flight",
            "Requests this gateway has on the replica.",
            labels=["replica"],
        )
        counters = {
            attr: CounterMetricFamily(name, help_, labels=["replica"])
            for attr, (name, help_) in ROUTING_COUNTERS.items()
        }
        conversations = router.conversations  # (decayed to now, before they are read)
        open_conversations = GaugeMetricFamily(
            "ownllm_replica_open_conversations",
            "Answers on the replica whose next turn has not come, weighted by the share that "
            "continue and decayed by the think time (what a move would put at risk).",
            labels=["replica"],
        )
        for replica in router.replicas:
            for s in REPLICA_STATES:
                states.add_metric([replica.name, s], float(replica.state == s))
            in_flight.add_metric([replica.name], replica.view.num_in_flight)
            open_conversations.add_metric([replica.name], replica.view.open_conversations)
            for attr, family in counters.items():
                family.add_metric([replica.name], getattr(replica, attr))
        yield states
        yield in_flight
        yield from counters.values()
        if conversations is not None:
            yield open_conversations
            yield GaugeMetricFamily(
                "ownllm_routing_conversation_think_seconds",
                "The think time in use: answer to next turn, learned or fixed.",
                value=conversations.think_s,
            )
            yield GaugeMetricFamily(
                "ownllm_routing_conversation_continued_share",
                "The part of recent answers that a next turn followed.",
                value=conversations.share,
            )


class Metrics:
    """The app's metrics; `render()` is the /metrics body."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ownllm_requests",
            "Inference API requests by outcome.",
            ["endpoint", "status"],
            registry=r,
        )
        self.finished = Counter(
            "ownllm_choices_finished",
            "Generated choices by finish reason.",
            ["endpoint", "finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ownllm_prompt_tokens", "Prompt (input) tokens processed.", ["endpoint"], registry=r
        )
        self.output_tokens = Counter(
            "ownllm_generation_tokens", "Generated (output) tokens.", ["endpoint"], registry=r
        )
        self.in_progress = Gauge(
            "ownllm_requests_in_progress", "Requests being served now.", ["endpoint"], registry=r
        )
        self.ttft = Histogram(
            "ownllm_time_to_first_token_seconds",
            "Time from request to first token.",
            ["endpoint"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "ownllm_request_latency_seconds",
            "Time from request to last byte.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(state))
        r.register(_RoutingCollector(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)
