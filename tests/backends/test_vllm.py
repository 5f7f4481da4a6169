"""The vllm backend against a real vLLM server (its CPU build, one for the whole session,
tests/vllm_servers.py): token-id prompts, streaming, n, stop, logprobs, JSON schema,
adapters loaded on demand, a stacked request on its cat composition, what vLLM cannot do
as a 400 naming the parameter, and unloading. Greedy decoding throughout, and each
ending is built (max_tokens with ignore_eos, a stop string taken from the greedy text),
never a sampled stop."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from ownllm.backends.base import AdapterWeight, GenerateRequest, ModelInfo, SamplingParams
from ownllm.backends.vllm import VLLMBackend, lora_name
from ownllm.config import BackendConfig
from ownllm.errors import InvalidRequestError, ModelNotFoundError
from ownllm.models.tokenizer import Tokenizer
from tests.vllm_servers import MAX_LORA_RANK, SERVED_NAME

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name three colours."}]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server("a")


@pytest.fixture(scope="module")
def tokenizer(server):
    return Tokenizer.from_dir(server.model_dir)


@pytest.fixture(scope="module")
def adapters(server, tmp_path_factory):
    """Three random rank-8 adapters of the shipped model (PEFT directories) by id."""
    from tests.adapters.conftest import make_peft_adapter

    root = tmp_path_factory.mktemp("vllm-adapters")
    return {
        f"{seed:024x}": str(make_peft_adapter(server.model_dir, root / str(seed), r=8, seed=seed))
        for seed in (1, 2, 3)
    }


@pytest.fixture
async def backend(server, tokenizer, adapters, tmp_path):
    cfg = BackendConfig(name="vllm-a", kind="vllm", url=server.url)
    info = ModelInfo(SERVED_NAME, 2048, tokenizer.vocab_size, "bfloat16")
    from ownllm.adapters.compose import cat_into

    b = VLLMBackend(
        cfg,
        model_info=info,
        tokenizer=tokenizer,
        adapter_resolver=adapters.get,
        composer=cat_into,
        cache_dir=tmp_path / "compositions",
    )
    await b.start()
    yield b
    await b.shutdown()


def request(tokenizer, max_tokens=8, adapters=(), **sampling) -> GenerateRequest:
    sampling = {"temperature": 0.0, "ignore_eos": True, **sampling}
    return GenerateRequest(
        "v1",
        tokenizer.encode_chat(MESSAGES),
        SamplingParams(max_tokens=max_tokens, **sampling),
        adapters=tuple(adapters),
        cache_scope="acme",
        messages=MESSAGES,
    )


async def collect(backend, req) -> list:
    return [d async for d in backend.generate(req)]


def text_of(deltas, index=0) -> str:
    return "".join(d.text for d in deltas if d.index == index)


async def served_models(server) -> set[str]:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{server.url}/v1/models")).json()
    return {m["id"] for m in body["data"]}


async def test_a_chat_prompt_goes_as_token_ids_and_streams_back(backend, tokenizer):
    assert backend.model_info.max_model_len == 2048  # from the server's /v1/models
    req = request(tokenizer, max_tokens=8)
    deltas = await collect(backend, req)
    ids = [t for d in deltas for t in d.token_ids]
    assert len(ids) == 8 and text_of(deltas) == tokenizer.decode(ids)
    last = deltas[-1]
    assert last.finish_reason == "length" and last.num_output_tokens == 8
    assert last.num_prompt_tokens == len(req.prompt_token_ids)


async def test_n_stop_and_logprobs_map_one_to_one(backend, tokenizer):
    greedy = text_of(await collect(backend, request(tokenizer, max_tokens=12)))
    words = greedy.split()
    assert len(words) >= 3, greedy
    stop = " " + words[2]  # the greedy answer's third word ends it early
    deltas = await collect(backend, request(tokenizer, max_tokens=12, stop=(stop,)))
    assert text_of(deltas) == greedy[: greedy.index(stop)]
    assert deltas[-1].finish_reason == "stop"
    sampled = request(tokenizer, max_tokens=5, n=2, temperature=0.8, seed=3)
    deltas = await collect(backend, sampled)
    assert {d.index: (d.finish_reason, d.num_output_tokens) for d in deltas if d.finish_reason} == {
        0: ("length", 5),
        1: ("length", 5),
    }
    with pytest.raises(InvalidRequestError) as greedy_n:  # vLLM's own rule, passed on
        await collect(backend, request(tokenizer, max_tokens=5, n=2))
    assert "greedy" in greedy_n.value.message
    deltas = await collect(backend, request(tokenizer, max_tokens=4, logprobs=2))
    logprobs = [lp for d in deltas for lp in d.logprobs or ()]
    assert [lp.token_id for lp in logprobs] == [t for d in deltas for t in d.token_ids]
    assert all(len(lp.top) == 2 and lp.logprob <= 0 for lp in logprobs)
    assert logprobs[0].top[0][0] == logprobs[0].token_id  # greedy: the best is the chosen


async def test_logit_bias_is_forwarded_to_vllm(backend, tokenizer):
    ids = [t for d in await collect(backend, request(tokenizer, max_tokens=6)) for t in d.token_ids]
    target = ids[3]
    forced = await collect(backend, request(tokenizer, max_tokens=6, logit_bias=((target, 100.0),)))
    assert [t for d in forced for t in d.token_ids] == [target] * 6
    banned = await collect(
        backend, request(tokenizer, max_tokens=6, logit_bias=((ids[0], -100.0),))
    )
    assert [t for d in banned for t in d.token_ids][0] != ids[0]


async def test_json_schema_output_uses_vllms_structured_outputs(backend, tokenizer):
    req = request(tokenizer, max_tokens=64, ignore_eos=False)
    req.response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    deltas = await collect(backend, req)
    assert deltas[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(deltas)), SCHEMA)


async def test_an_adapter_loads_on_first_use_and_changes_the_answer(backend, tokenizer, server):
    adapter_id = "1".zfill(24)
    base = await collect(backend, request(tokenizer, max_tokens=4, logprobs=0))
    tuned = await collect(backend, request(tokenizer, 4, [AdapterWeight(adapter_id)], logprobs=0))
    assert adapter_id in await served_models(server)
    assert backend.resident_adapters == {adapter_id}
    first = [d.logprobs[0].logprob for d in (base[0], tuned[0])]
    assert first[0] != first[1]  # the adapter ran: the first token's logprob moved


async def test_a_stacked_request_runs_on_its_cached_cat_composition(backend, tokenizer, server):
    stack = [AdapterWeight("1".zfill(24)), AdapterWeight("2".zfill(24), 0.5)]
    deltas = await collect(backend, request(tokenizer, 4, stack))
    assert deltas[-1].finish_reason == "length"
    name = lora_name(stack)
    assert name.startswith("cat-") and name in await served_models(server)
    config = json.loads((backend.cache_dir / name / "adapter_config.json").read_text())
    assert config["r"] == 16  # cat: the ranks add up
    again = await collect(backend, request(tokenizer, 4, stack))
    assert text_of(again) == text_of(deltas)  # built once: the same composition answers


async def test_what_the_replica_cannot_do_is_a_400_naming_the_parameter(backend, tokenizer):
    too_wide = [AdapterWeight(i, 1.0) for i in ("1".zfill(24), "2".zfill(24), "3".zfill(24))]
    too_wide += [AdapterWeight("1".zfill(24), 0.5), AdapterWeight("2".zfill(24), 0.5)]
    assert 8 * len(too_wide) > MAX_LORA_RANK
    with pytest.raises(InvalidRequestError) as wide:
        await collect(backend, request(tokenizer, 4, too_wide))
    assert wide.value.param == "adapters" and wide.value.status_code == 400
    req = request(tokenizer, 4)
    req.response_format = {"type": "regex"}
    with pytest.raises(InvalidRequestError) as kind:
        await collect(backend, req)
    assert kind.value.param == "response_format.type"
    with pytest.raises(InvalidRequestError) as many:
        await collect(backend, request(tokenizer, 4, logprobs=100))  # vLLM's cap is 20
    assert many.value.status_code == 400 and "logprobs" in many.value.message
    with pytest.raises(ModelNotFoundError):
        await collect(backend, request(tokenizer, 4, [AdapterWeight("f" * 24)]))


async def test_unloading_an_adapter_unloads_its_compositions_everywhere(backend, tokenizer, server):
    adapter_id = "3".zfill(24)
    stack = [AdapterWeight("1".zfill(24)), AdapterWeight(adapter_id)]
    await collect(backend, request(tokenizer, 2, [AdapterWeight(adapter_id)]))
    await collect(backend, request(tokenizer, 2, stack))
    assert {adapter_id, lora_name(stack)} <= await served_models(server)
    await backend.unload_adapter(adapter_id)
    served = await served_models(server)
    assert adapter_id not in served and lora_name(stack) not in served
    assert not (backend.cache_dir / lora_name(stack)).exists()
    assert adapter_id not in backend.resident_adapters


async def test_a_replica_that_forgot_an_adapter_gets_it_again(backend, tokenizer, server):
    adapter_id = "2".zfill(24)
    await collect(backend, request(tokenizer, 2, [AdapterWeight(adapter_id)]))
    async with httpx.AsyncClient() as client:  # as a restarted replica: it has lost it
        await client.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": adapter_id})
    deltas = await collect(backend, request(tokenizer, 2, [AdapterWeight(adapter_id)]))
    assert deltas[-1].finish_reason == "length" and adapter_id in await served_models(server)


async def test_stats_come_from_vllms_metrics(backend):
    stats = await backend.scrape()
    assert stats.kv_blocks_total > 0 and stats.tokens_generated > 0


def test_the_gateway_answers_the_official_client_from_vllm(server, tokenizer, tmp_path):
    """ownllm (no engine of its own) in front of the vLLM server: the same greedy answer
    as vLLM gives for the prompt ownllm's chat template makes, whole and streamed."""
    import openai

    from ownllm.api.app import create_app
    from ownllm.api.state import AppState
    from ownllm.config import load_config
    from ownllm.models.cache import PreparedModel
    from ownllm.store.blobs import DataDir
    from tests.server import serve_app

    overrides = {
        "store": {"data_dir": str(tmp_path)},
        "model": {"name": SERVED_NAME},
        "backends": [{"kind": "vllm", "url": server.url}],
    }
    state = AppState(
        load_config(env={}, overrides=overrides),
        DataDir(tmp_path).ensure(),
        model=PreparedModel(SERVED_NAME, server.model_dir, "", from_cache=True, seconds=0.0),
        tokenizer=tokenizer,
    )
    prompt = tokenizer.encode_chat(MESSAGES)
    direct = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": SERVED_NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0,
              "ignore_eos": True},
        timeout=120,
    ).json()["choices"][0]["text"]  # fmt: skip
    with serve_app(create_app(state)) as url:
        assert isinstance(state.backend, VLLMBackend)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        args = {"model": SERVED_NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0,
                "extra_body": {"ignore_eos": True}}  # fmt: skip
        completion = client.chat.completions.create(**args)
        assert completion.choices[0].message.content == direct
        assert completion.usage.completion_tokens == 8
        assert completion.usage.prompt_tokens == len(prompt)
        chunks = list(client.chat.completions.create(**args, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct
