"""Model resolution: base id, an adapter's model name (e.g. `ft:…`) or id, the `adapters`
extension; another tenant's private adapter does not exist (404). Sampling: what the request
sends, else the served model's generation defaults, else OpenAI's."""

from __future__ import annotations

import pytest

from ownllm.adapters.registry import register_adapter
from ownllm.api.calls import resolve_adapters
from ownllm.api.schemas import AdapterRef
from ownllm.backends.base import AdapterWeight
from ownllm.config import GenerationDefaults
from ownllm.errors import InvalidRequestError, ModelNotFoundError
from ownllm.gateway.principal import Principal
from ownllm.store.db import Database

ACME = Principal(tenant_id="acme")
OTHER = Principal(tenant_id="other")
FT_NAME = "ft:tiny:acme:tone:ftjob-abc"


@pytest.fixture
def with_adapter(fake_state, db_url, adapter_a):
    fake_state.db = Database.open(db_url)
    record = register_adapter(
        fake_state.db,
        fake_state.data_dir,
        adapter_a,
        name=FT_NAME,
        tenant_id="acme",
        base_model="tiny",
        base_sha256="",
        source="imported",
    )
    yield fake_state, record
    fake_state.db.close()


def test_base_model_needs_no_adapter(fake_state):
    assert resolve_adapters(fake_state, ACME, "tiny", None) == ((), None)
    with pytest.raises(ModelNotFoundError):
        resolve_adapters(fake_state, ACME, "gpt-4o", None)


def test_adapter_by_name_or_id_for_its_tenant_only(with_adapter):
    state, record = with_adapter
    assert resolve_adapters(state, ACME, FT_NAME, None) == ((AdapterWeight(record.id, 1.0),), None)
    assert resolve_adapters(state, ACME, record.id, None) == (
        (AdapterWeight(record.id, 1.0),),
        None,
    )
    with pytest.raises(ModelNotFoundError) as info:
        resolve_adapters(state, OTHER, FT_NAME, None)
    assert info.value.param == "model" and info.value.code == "model_not_found"


def test_adapters_extension_stacks_with_weights(with_adapter):
    state, record = with_adapter
    refs = [AdapterRef(id=FT_NAME, weight=0.5)]
    adapters, route = resolve_adapters(state, ACME, FT_NAME, refs)
    assert adapters == (AdapterWeight(record.id, 1.0), AdapterWeight(record.id, 0.5))
    assert route is None  # not a router alias
    with pytest.raises(ModelNotFoundError) as info:
        resolve_adapters(state, OTHER, "tiny", refs)
    assert info.value.param == "adapters[0].id"
    with pytest.raises(InvalidRequestError) as info:
        resolve_adapters(state, ACME, FT_NAME, refs * 4)
    assert info.value.param == "adapters"


async def test_chat_with_an_adapter_model_runs_it(client, with_adapter):
    state, record = with_adapter
    body = {"model": FT_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["model"] == FT_NAME
    assert state.backend.requests[-1].adapters == (AdapterWeight(record.id, 1.0),)


# -- sampling: the request's value, else the model's generation default, else OpenAI's ----------

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
MODEL_DEFAULTS = GenerationDefaults(
    temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.1
)


def sent_sampling(fake_state) -> tuple:
    sampling = fake_state.backend.requests[-1].sampling
    return tuple(getattr(sampling, name) for name in SAMPLING)


async def test_fields_left_out_get_the_models_defaults(client, fake_state):
    fake_state.generation_defaults = MODEL_DEFAULTS
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert sent_sampling(fake_state) == (0.7, 0.8, 20, 0.05, 1.1)
    nulls = dict.fromkeys(SAMPLING)  # an explicit null is the same as leaving it out
    assert (await client.post("/v1/chat/completions", json={**CHAT, **nulls})).status_code == 200
    assert sent_sampling(fake_state) == (0.7, 0.8, 20, 0.05, 1.1)
    completion = {"model": "tiny", "prompt": "Hi", "max_tokens": 2}
    assert (await client.post("/v1/completions", json=completion)).status_code == 200
    assert sent_sampling(fake_state) == (0.7, 0.8, 20, 0.05, 1.1)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_a_value_the_request_sends_always_wins(client, fake_state, route):
    fake_state.generation_defaults = MODEL_DEFAULTS
    body = CHAT if route == "/v1/chat/completions" else {"model": "tiny", "prompt": "Hi"}
    neutral = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}
    response = await client.post(route, json={**body, **neutral, "repetition_penalty": 1.0})
    assert response.status_code == 200
    assert sent_sampling(fake_state) == (1.0, 1.0, 0, 0.0, 1.0)
    fake_state.generation_defaults = GenerationDefaults(temperature=0.0)
    assert (await client.post(route, json={**body, "temperature": 0.4})).status_code == 200
    assert sent_sampling(fake_state)[0] == 0.4


async def test_without_defaults_the_openai_defaults_apply(client, fake_state):
    assert fake_state.generation_defaults == GenerationDefaults()
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert sent_sampling(fake_state) == (1.0, 1.0, 0, 0.0, 1.0)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
async def test_logit_bias_reaches_the_backend_as_sorted_token_pairs(client, fake_state, route):
    body = CHAT if route == "/v1/chat/completions" else {"model": "tiny", "prompt": "Hi"}
    bias = {"17": 5, "3": -100, "0042": 100, "9": -0.5}
    response = await client.post(route, json={**body, "logit_bias": bias, "n": 2, "seed": 1})
    assert response.status_code == 200, response.text
    sampling = fake_state.backend.requests[-1].sampling
    assert sampling.logit_bias == ((3, -100.0), (9, -0.5), (17, 5.0), (42, 100.0))
    assert sampling.n == 2 and sampling.seed == 1
    assert (await client.post(route, json={**body, "logit_bias": {}})).status_code == 200
    assert fake_state.backend.requests[-1].sampling.logit_bias == ()
