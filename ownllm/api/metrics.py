"""Prometheus metrics of one app: a per-app CollectorRegistry, no global state.

Request counters and histograms are updated by the inference pipeline, the one path of
every inference endpoint (embeddings included); engine gauges (queue depth, running requests, resident adapters, KV-cache blocks)
are read from `backend.stats()` at scrape time, so they are never stale.

Labels are bounded on purpose: `endpoint` (a handful of routes), `status` (HTTP codes
the API returns) and `finish_reason` (stop, length, content_filter, client_gone, error).
No model, adapter, tenant or user labels: those are unbounded and belong in the usage
ledger, not in a time series.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
