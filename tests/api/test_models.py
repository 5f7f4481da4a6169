"""GET /v1/models and /v1/models/{id}: OpenAI's fields, plus the `generation_defaults`
extension on the base model and its adapters."""

from __future__ import annotations

from openai import AsyncOpenAI

from ownllm.adapters.registry import register_adapter
from ownllm.config import GenerationDefaults
from ownllm.models.cache import PreparedModel
from ownllm.store.db import Database

OPENAI_FIELDS = {"id", "object", "created", "owned_by"}


async def test_base_model_shows_its_generation_defaults(client, fake_state):
    fake_state.generation_defaults = GenerationDefaults(temperature=0.0, top_p=0.9)
    model = (await client.get("/v1/models/tiny")).json()
    assert model.keys() >= OPENAI_FIELDS and model["object"] == "model"
    assert model["generation_defaults"] == {"temperature": 0.0, "top_p": 0.9}
    assert model["parent"] is None and "adapter_id" not in model  # nothing unset added
    listed = (await client.get("/v1/models")).json()
    assert listed["object"] == "list" and listed["data"][0] == model


async def test_openai_client_reads_the_extension(client, fake_state):
    fake_state.generation_defaults = GenerationDefaults(top_k=20)
    openai = AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client)
    model = await openai.models.retrieve("tiny")
    assert model.id == "tiny" and model.owned_by == "ownllm"
    assert model.model_extra["generation_defaults"] == {"top_k": 20}


async def test_no_defaults_is_an_empty_object(client):
    assert (await client.get("/v1/models/tiny")).json()["generation_defaults"] == {}


async def test_adapters_show_the_base_models_defaults(
    client,
    fake_state,
    db_url,
    tiny_model_dir,
    adapter_a,
):
    fake_state.db = Database.open(db_url)
    fake_state.model = PreparedModel("tiny", tiny_model_dir, "", False, 0.0)
    fake_state.generation_defaults = GenerationDefaults(temperature=0.2)
    try:
        register_adapter(
            fake_state.db,
            fake_state.data_dir,
            adapter_a,
            name="tone",
            tenant_id="default",
            base_model="tiny",
            base_sha256="",
            source="imported",
        )
        model = (await client.get("/v1/models/tone")).json()
        assert model["parent"] == "tiny" and model["adapter_id"]
        assert model["generation_defaults"] == {"temperature": 0.2}
    finally:
        fake_state.db.close()


async def test_unknown_model_is_still_a_404(client):
    response = await client.get("/v1/models/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
