"""The `openai` backend against a second ownllm on loopback: a real HTTP server (uvicorn)
whose app runs a ScriptedBackend, so every answer is known in advance."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import httpx
import pytest

from ownllm.api.app import create_app
from ownllm.backends.base import AdapterWeight, GenerateRequest, ModelInfo, SamplingParams
from ownllm.backends.openai_compat import OpenAIBackend, parse_metrics
from ownllm.backends.scripted import ScriptedBackend
from ownllm.config import BackendConfig
from ownllm.errors import (
    BackendError,
    BackendStreamError,
    BackendUnavailableError,
    ContextLengthExceededError,
    InvalidRequestError,
    OverloadedError,
)
from tests.server import free_port, serve_app

MESSAGES = [{"role": "user", "content": "Say hello."}]
INFO = ModelInfo("tiny", 256, 512, "float32")


@pytest.fixture
def replica(fake_state):
    """(base URL, its ScriptedBackend): an ownllm serving GREETING on loopback."""
    app = create_app(fake_state, start_engine=False)
    with serve_app(app) as url:
        yield url, fake_state.backend


def backend_for(url: str, **settings) -> OpenAIBackend:
    cfg = BackendConfig(name="replica", kind="openai", url=url, **settings)
    return OpenAIBackend(cfg, model_info=INFO)


def chat(max_tokens: int = 5, **sampling) -> GenerateRequest:
    return GenerateRequest(
        "r1",
        [1, 2, 3],
        SamplingParams(max_tokens=max_tokens, temperature=0.0, **sampling),
        model="tiny",
        messages=MESSAGES,
    )


async def collect(backend, request) -> list:
    return [delta async for delta in backend.generate(request)]


def texts(deltas, n: int = 1) -> list[str]:
    return ["".join(d.text for d in deltas if d.index == i) for i in range(n)]


async def test_a_chat_call_streams_the_replicas_answer_with_its_usage(replica):
    url, scripted = replica
    backend = backend_for(url + "/v1/")  # the form an openai client's base_url takes
    deltas = await collect(backend, chat(max_tokens=5))
    assert texts(deltas) == ["Hello there, friend!"]
    last = deltas[-1]
    assert last.finish_reason == "length" and last.num_output_tokens == 5
    assert last.num_prompt_tokens > 0  # the replica's own count of the rendered chat
    (sent,) = scripted.requests
    assert sent.sampling.max_tokens == 5 and sent.sampling.temperature == 0.0
    await backend.shutdown()


async def test_n_stop_seed_logit_bias_and_logprobs_reach_the_replica_and_come_back(replica):
    url, scripted = replica
    backend = backend_for(url)
    bias = ((7, -100.0), (42, 2.5))
    request = chat(max_tokens=6, n=2, stop=("!",), seed=7, logprobs=2, logit_bias=bias)
    deltas = await collect(backend, request)
    assert texts(deltas, 2) == ["Hello there, friend", "1:Hello there, friend"]
    assert {d.index: d.finish_reason for d in deltas if d.finish_reason} == {0: "stop", 1: "stop"}
    (sent,) = scripted.requests
    assert (sent.sampling.n, sent.sampling.stop, sent.sampling.seed) == (2, ("!",), 7)
    assert sent.sampling.logit_bias == bias
    first = next(d for d in deltas if d.logprobs)
    (lp,) = first.logprobs
    assert lp.logprob == -0.5 and [t[1:] for t in lp.top] == [("alt0", -1.0), ("alt1", -2.0)]
    await backend.shutdown()


async def test_a_completions_prompt_goes_as_text(replica):
    url, scripted = replica
    backend = backend_for(url)
    request = GenerateRequest(
        "c1", [5, 6], SamplingParams(max_tokens=3, logprobs=1), model="tiny", prompt_text="Hi"
    )
    deltas = await collect(backend, request)
    assert texts(deltas) == ["Hello there,"]
    assert [lp.token for d in deltas for lp in d.logprobs or ()] == ["Hello", " there", ","]
    assert len(scripted.requests) == 1
    await backend.shutdown()


async def test_the_replicas_errors_become_ownllms(replica):
    url, scripted = replica
    backend = backend_for(url)
    scripted.error = OverloadedError("queue full", retry_after=7)
    with pytest.raises(OverloadedError) as busy:
        await collect(backend, chat())
    assert busy.value.retry_after == 7.0 and "queue full" in busy.value.message
    scripted.error = None
    with pytest.raises(ContextLengthExceededError) as long:
        await collect(backend, chat(max_tokens=10_000))  # the replica's context is 256
    assert long.value.status_code == 400 and "maximum context length" in long.value.message
    with pytest.raises(InvalidRequestError) as bad:
        await collect(backend, chat(top_p=5.0))
    assert bad.value.param == "top_p"
    await backend.shutdown()


async def test_a_stream_that_breaks_after_it_began_is_a_stream_error(replica):
    url, scripted = replica
    scripted.abort_after = 2  # the replica ends its stream with an error event
    backend = backend_for(url)
    got = []
    with pytest.raises(BackendStreamError) as broken:
        async for delta in backend.generate(chat(max_tokens=8)):
            got.append(delta)
    assert texts(got) == ["Hello there"] and broken.value.status_code == 502
    await backend.shutdown()


async def test_an_unreachable_server_is_retryable_before_the_first_token():
    backend = backend_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailableError) as down:
        await collect(backend, chat())
    assert down.value.status_code == 503 and "could not be reached" in down.value.message
    assert not await backend.health()
    await backend.shutdown()


async def test_max_concurrency_refuses_one_more(replica):
    url, scripted = replica
    scripted.gate = threading.Semaphore(0)  # hold every request after its first token
    backend = backend_for(url, max_concurrency=1)
    first = backend.generate(chat(max_tokens=3))
    assert (await anext(first)).text == "Hello"
    with pytest.raises(OverloadedError) as full:
        await collect(backend, chat())
    assert "max_concurrency" in full.value.message and backend.in_flight == 1
    scripted.gate.release(2)
    rest = [d async for d in first]
    assert rest[-1].finish_reason == "length" and backend.in_flight == 0
    await backend.shutdown()


async def test_an_adapter_on_a_plain_openai_endpoint_is_a_400(replica):
    url, _ = replica
    backend = backend_for(url)
    request = chat()
    request.adapters = (AdapterWeight("0123456789abcdef01234567"),)
    request.model = "ft:tiny:acme:x:1"
    with pytest.raises(InvalidRequestError) as refused:
        await collect(backend, request)
    assert refused.value.param == "model" and "serves no ownllm adapters" in refused.value.message
    await backend.shutdown()


async def test_health_and_stats_of_an_ownllm_replica(replica):
    url, scripted = replica
    backend = backend_for(url, dialect="ownllm")
    assert backend.health_path == "/ready"
    scripted.gate = threading.Semaphore(0)
    held = backend.generate(chat(max_tokens=3))
    await anext(held)
    stats = await backend.scrape()  # the replica's /metrics: one request running
    assert stats.running == 1
    scripted.gate.release(2)
    async for _ in held:
        pass
    await backend.shutdown()


async def test_the_api_key_is_sent_and_a_refused_key_is_the_operators_problem(
    tmp_path, tiny_model_dir, monkeypatch
):
    from ownllm.api.state import AppState
    from ownllm.config import load_config
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir

    config = load_config(
        env={},
        overrides={
            "store": {"data_dir": str(tmp_path)},
            "auth": {"admin_key": "sk-r"},
            "model": {"name": "tiny"},
        },
    )
    state = AppState(
        config, DataDir(tmp_path).ensure(), tokenizer=Tokenizer.from_dir(tiny_model_dir)
    )
    state.backend = ScriptedBackend()
    with serve_app(create_app(state, start_engine=False)) as url:
        backend = backend_for(url)
        with pytest.raises(BackendError) as refused:
            await collect(backend, chat())
        assert refused.value.status_code == 502 and "api_key_env" in refused.value.message
        backend = OpenAIBackend(
            BackendConfig(name="r", kind="openai", url=url), model_info=INFO, api_key="sk-r"
        )
        assert texts(await collect(backend, chat(max_tokens=1))) == ["Hello"]
        await backend.shutdown()


def test_vllm_metrics_become_engine_stats():
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{model_name="m",engine="0"} 3.0',
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{model_name="m",engine="0"} 5.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{model_name="m",engine="0"} 0.25',
            "# TYPE vllm:cache_config_info gauge",
            'vllm:cache_config_info{block_size="16",num_gpu_blocks="400"} 1.0',
            "# TYPE vllm:generation_tokens counter",
            'vllm:generation_tokens_total{model_name="m",engine="0"} 1234.0',
            'vllm:generation_tokens_created{model_name="m",engine="0"} 1.7e9',
        ]
    )
    from ownllm.backends.openai_compat import VLLM_METRICS

    stats = parse_metrics(text + "\n", VLLM_METRICS)
    assert (stats.running, stats.waiting, stats.tokens_generated) == (3, 5, 1234)
    assert (stats.kv_blocks_used, stats.kv_blocks_total) == (100, 400)


async def test_stats_without_metrics_count_what_is_in_flight():
    backend = backend_for("http://127.0.0.1:9")
    assert backend.stats().running == 0
    assert isinstance(backend.client, httpx.AsyncClient)
    await backend.shutdown()


def test_a_gateway_over_an_openai_backend_serves_the_official_client(
    replica, tmp_path, tiny_model_dir
):
    """ownllm in front of another ownllm: chat, a stream with usage, and an error passed
    on, through the official client; the gateway loads no model itself."""
    import openai

    from ownllm.api.state import AppState
    from ownllm.backends.openai_compat import OpenAIBackend as Remote
    from ownllm.config import load_config
    from ownllm.models.tokenizer import Tokenizer
    from ownllm.store.blobs import DataDir

    url, scripted = replica
    overrides = {
        "store": {"data_dir": str(tmp_path)},
        "model": {"name": "tiny"},
        "backends": [{"kind": "openai", "url": url, "name": "fleet"}],
    }
    config = load_config(env={}, overrides=overrides)
    state = AppState(
        config, DataDir(tmp_path).ensure(), tokenizer=Tokenizer.from_dir(tiny_model_dir)
    )
    with serve_app(create_app(state)) as gateway_url:
        assert isinstance(state.backend, Remote) and state.backend.name == "fleet"
        client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
        assert completion.choices[0].message.content == "Hello there, friend"
        assert completion.usage.completion_tokens == 4
        assert scripted.requests[-1].sampling.max_tokens == 4
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=MESSAGES,
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello there,"
        assert chunks[-1].usage.completion_tokens == 3
        scripted.error = OverloadedError("replica queue full", retry_after=3)
        with pytest.raises(openai.InternalServerError) as busy:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
        assert busy.value.status_code == 503 and "replica queue full" in str(busy.value)


def test_the_model_sent_is_the_one_the_endpoint_serves():
    cfg = BackendConfig(name="paid", kind="openai", url="http://x", models=("gpt-a", "gpt-b"))
    backend = OpenAIBackend(cfg, model_info=INFO)
    asked = {
        m: backend.upstream_model(GenerateRequest("r", [1], model=m)) for m in ("gpt-b", "tiny")
    }
    assert asked == {"gpt-b": "gpt-b", "tiny": "gpt-a"}  # the served model overflows to gpt-a
    pinned = OpenAIBackend(replace(cfg, upstream_model="gpt-c"), model_info=INFO)
    assert pinned.upstream_model(GenerateRequest("r", [1], model="tiny")) == "gpt-c"
    plain = OpenAIBackend(BackendConfig(kind="openai", url="http://x"), model_info=INFO)
    assert plain.upstream_model(GenerateRequest("r", [1], model="llama3")) == "llama3"


async def test_abort_closes_the_connection_and_the_replica_stops(replica):
    url, scripted = replica
    scripted.gate = threading.Semaphore(0)
    backend = backend_for(url)
    stream = backend.generate(chat(max_tokens=50))
    assert (await anext(stream)).text == "Hello"
    await backend.abort("r1")
    with pytest.raises(BackendStreamError):
        await anext(stream)
    deadline = asyncio.get_running_loop().time() + 60  # bounds a hang only
    while scripted.running and asyncio.get_running_loop().time() < deadline:
        scripted.gate.release()  # the replica notices its client left at its next token
        await asyncio.sleep(0.05)
    assert not scripted.running and backend.in_flight == 0
    await backend.shutdown()
