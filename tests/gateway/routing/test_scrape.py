import pytest

from ownllm.gateway.routing.scrape import parse_load

VLLM = """\
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="ad-1,ad-2",waiting_lora_adapters="ad-3"} 1.7e9
"""

OWNLLM = """\
# TYPE ownllm_queue_depth gauge
ownllm_queue_depth 2.0
# TYPE ownllm_running_requests gauge
ownllm_running_requests 7.0
# TYPE ownllm_kv_cache_blocks_used gauge
ownllm_kv_cache_blocks_used 30.0
# TYPE ownllm_kv_cache_blocks_total gauge
ownllm_kv_cache_blocks_total 120.0
"""


def test_vllm_metrics():
    load = parse_load(VLLM)
    assert (load.num_waiting, load.num_running, load.kv_usage) == (3, 5, 0.42)
    assert load.adapters == ("ad-1", "ad-2", "ad-3")


def test_ownllm_metrics():
    load = parse_load(OWNLLM)
    assert (load.num_waiting, load.num_running, load.kv_usage) == (2, 7, 0.25)


def test_not_prometheus_text_raises():
    with pytest.raises(ValueError):
        parse_load("<html>not metrics</html>\n{")
