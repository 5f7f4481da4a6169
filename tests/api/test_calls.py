"""Model resolution: base id, an adapter's model name (e.g. `ft:…`) or id, the `adapters`
extension; another tenant's private adapter does not exist (404)."""

from __future__ import annotations

import pytest

from ownllm.adapters.registry import register_adapter
from ownllm.api.calls import resolve_adapters
from ownllm.api.schemas import AdapterRef
from ownllm.backends.base import AdapterWeight
from ownllm.errors import InvalidRequestError, ModelNotFoundError
from ownllm.gateway.principal import Principal
from ownllm.store.db import Database
from tests.adapters.conftest import adapter_a  # noqa: F401  (fixture)

ACME = Principal(tenant_id="acme")
OTHER = Principal(tenant_id="other")
FT_NAME = "ft:tiny:acme:tone:ftjob-abc"


@pytest.fixture
def with_adapter(fake_state, db_url, adapter_a):  # noqa: F811
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
    assert resolve_adapters(fake_state, ACME, "tiny", None) == ()
    with pytest.raises(ModelNotFoundError):
        resolve_adapters(fake_state, ACME, "gpt-4o", None)


def test_adapter_by_name_or_id_for_its_tenant_only(with_adapter):
    state, record = with_adapter
    assert resolve_adapters(state, ACME, FT_NAME, None) == (AdapterWeight(record.id, 1.0),)
    assert resolve_adapters(state, ACME, record.id, None) == (AdapterWeight(record.id, 1.0),)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_adapters(state, OTHER, FT_NAME, None)
    assert info.value.param == "model" and info.value.code == "model_not_found"


def test_adapters_extension_stacks_with_weights(with_adapter):
    state, record = with_adapter
    refs = [AdapterRef(id=FT_NAME, weight=0.5)]
    assert resolve_adapters(state, ACME, FT_NAME, refs) == (
        AdapterWeight(record.id, 1.0),
        AdapterWeight(record.id, 0.5),
    )
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
