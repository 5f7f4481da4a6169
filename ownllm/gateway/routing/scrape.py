"""A replica's load, read from its Prometheus metrics.

vLLM exports `vllm:num_requests_waiting`, `vllm:num_requests_running`,
`vllm:kv_cache_usage_perc` (0..1; `vllm:gpu_cache_usage_perc` before 0.10) and
`vllm:lora_requests_info`, whose labels list the running and waiting adapters. An ownllm
replica exports `ownllm_queue_depth`, `ownllm_running_requests` and
`ownllm_kv_cache_blocks_used` / `_total`. A metric a replica does not export reads as 0;
text that is not the Prometheus format raises ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class ScrapedLoad:
    num_waiting: int = 0
    num_running: int = 0
    kv_usage: float = 0.0
    adapters: tuple[str, ...] = ()  # resident or in use, where the replica says


def parse_load(text: str) -> ScrapedLoad:
    values: dict[str, float] = {}
    adapters: list[str] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:lora_requests_info":
                for label in ("running_lora_adapters", "waiting_lora_adapters"):
                    adapters += [a for a in sample.labels.get(label, "").split(",") if a]
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    waiting = values.get("vllm:num_requests_waiting", values.get("ownllm_queue_depth", 0.0))
    running = values.get("vllm:num_requests_running", values.get("ownllm_running_requests", 0.0))
    kv = values.get("vllm:kv_cache_usage_perc", values.get("vllm:gpu_cache_usage_perc"))
    if kv is None:
        total = values.get("ownllm_kv_cache_blocks_total", 0.0)
        kv = values.get("ownllm_kv_cache_blocks_used", 0.0) / total if total else 0.0
    return ScrapedLoad(int(waiting), int(running), float(kv), tuple(dict.fromkeys(adapters)))
