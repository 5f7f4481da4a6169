"""/v1/adapters over HTTP: tenant-scoped, OpenAI-shaped errors, nothing half-registered."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace

import httpx
import pytest
import torch
from sqlalchemy import func, select

from ownllm.api.app import create_app
from ownllm.models.cache import PreparedModel
from ownllm.models.tiny import make_tiny_model
from ownllm.store.schema import Adapter, File
from tests.adapters.conftest import files_under, make_peft_adapter, write_lora, zip_dir
from tests.tenants import gateway_state


class RecordingBackend:
    """Only what the adapter routes touch: unload_adapter (and model_info for /v1/models)."""

    def __init__(self) -> None:
        from ownllm.backends.base import ModelInfo

        self.model_info = ModelInfo("tiny", 512, 512, "float32")
        self.unloaded: list[str] = []

    async def unload_adapter(self, adapter_id: str) -> None:
        self.unloaded.append(adapter_id)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


def tar_gz(directory) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(directory, arcname="adapter")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")
    r4 = make_peft_adapter(tiny_model_dir, root / "r4", seed=1)
    r8 = make_peft_adapter(tiny_model_dir, root / "r8", r=8, seed=2)
    other = make_tiny_model(root / "other-base", hidden_size=96)
    wrong = make_peft_adapter(other, root / "wrong", seed=3)
    return {"r4": tar_gz(r4), "r8": tar_gz(r8), "wrong": tar_gz(wrong)}


@pytest.fixture
async def api(tmp_path, tiny_model_dir, two_tenants):
    state = gateway_state(tmp_path, two_tenants, backend=RecordingBackend())
    state.model = PreparedModel("tiny", tiny_model_dir, "b" * 64, from_cache=False, seconds=0.0)
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        client.gateway = app.state.gateway
        yield client, two_tenants, state


async def upload(client, headers, name, data, filename="adapter.tar.gz"):
    files = {"file": (filename, data, "application/gzip")}
    return await client.post("/v1/adapters", headers=headers, files=files, data={"name": name})


def assert_openai_error(response, status, param=None, text=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert text in error["message"]
    if param is not None:
        assert error["param"] == param


def rows(state) -> int:
    with state.db.session() as s:
        return s.scalar(select(func.count()).select_from(Adapter))


async def test_import_list_show_models_and_isolation(api, archives):
    client, tenants, state = api
    a, b = tenants.a.headers, tenants.b.headers
    created = await upload(client, a, "acme-tone", archives["r4"])
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["object"] == "adapter" and body["owned_by"] == "acme"
    assert body["source"] == "imported" and body["rank"] == 4 and body["base_model"] == "tiny"
    listed = (await client.get("/v1/adapters", headers=a)).json()["data"]
    assert [x["name"] for x in listed] == ["acme-tone"]
    assert (await client.get("/v1/adapters", headers=b)).json()["data"] == []
    shown = await client.get("/v1/adapters/acme-tone", headers=a)
    assert shown.json()["id"] == body["id"]
    assert_openai_error(await client.get("/v1/adapters/acme-tone", headers=b), 404, "adapter")
    assert_openai_error(await client.get(f"/v1/adapters/{body['id']}", headers=b), 404)
    models = {m["id"]: m for m in (await client.get("/v1/models", headers=a)).json()["data"]}
    assert {"parent": "tiny", "root": "tiny", "owned_by": "acme"}.items() <= models[
        "acme-tone"
    ].items()
    theirs = (await client.get("/v1/models", headers=b)).json()["data"]
    assert "tiny" in [m["id"] for m in theirs] and "acme-tone" not in [m["id"] for m in theirs]
    assert_openai_error(await client.get("/v1/models/acme-tone", headers=b), 404, "model")


async def test_bad_imports_are_clear_errors_and_leave_nothing(api, archives):
    client, tenants, state = api
    a = tenants.a.headers
    wrong = await upload(client, a, "wrong", archives["wrong"])
    assert_openai_error(wrong, 400, "base_model", "model.layers.0.self_attn.k_proj")
    data = bytearray(archives["r4"])
    corrupted = await upload(client, a, "corrupted", bytes(data[: len(data) // 2]))
    assert_openai_error(corrupted, 400, "file", "cannot unpack")
    plain = await upload(client, a, "plain", b"hello", filename="adapter.txt")
    assert_openai_error(plain, 400, "file")
    missing = await client.post("/v1/adapters", headers=a, data={"name": "x"})
    assert_openai_error(missing, 400, "file")
    assert (await upload(client, a, "taken", archives["r4"])).status_code == 200
    assert_openai_error(await upload(client, a, "taken", archives["r4"]), 409, "name")
    assert rows(state) == 1
    assert len(list(state.data_dir.adapters.iterdir())) == 1
    assert files_under(state.data_dir.tmp) == []


async def test_compose_export_and_delete(api, archives):
    client, tenants, state = api
    a, b = tenants.a.headers, tenants.b.headers
    r4 = (await upload(client, a, "r4", archives["r4"])).json()
    r8 = (await upload(client, a, "r8", archives["r8"])).json()
    body = {
        "name": "mix",
        "method": "cat",
        "adapters": [{"id": "r4", "weight": 0.5}, {"id": r8["id"]}],
    }
    mix = await client.post("/v1/adapters/compose", headers=a, json=body)
    assert mix.status_code == 200, mix.text
    assert mix.json()["parents"] == [r4["id"], r8["id"]] and mix.json()["rank"] == 12
    unknown = {**body, "name": "bad", "adapters": [{"id": "r4"}, {"id": "nope"}]}
    resp = await client.post("/v1/adapters/compose", headers=a, json=unknown)
    assert_openai_error(resp, 404, "adapters[1].id", "nope")
    ranks = {**body, "name": "bad", "method": "ties", "density": 0.5}
    assert_openai_error(
        await client.post("/v1/adapters/compose", headers=a, json=ranks), 400, "adapters", "use cat"
    )
    theirs = await client.post("/v1/adapters/compose", headers=b, json={**body, "name": "steal"})
    assert_openai_error(theirs, 404, "adapters[0].id")
    assert rows(state) == 3

    lora = await client.post("/v1/adapters/mix/export", headers=a, json={"format": "gguf-lora"})
    assert lora.status_code == 200 and lora.content[:4] == b"GGUF"
    merged = await client.post("/v1/adapters/mix/export", headers=a, json={"format": "hf"})
    assert merged.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(merged.content)) as tf:
        names = tf.getnames()
        config = json.load(tf.extractfile(next(n for n in names if n.endswith("config.json"))))
    assert any(n.endswith("model.safetensors") for n in names) and config["hidden_size"] == 64
    bad = await client.post("/v1/adapters/mix/export", headers=a, json={"format": "onnx"})
    assert_openai_error(bad, 400, "format")
    assert_openai_error(
        await client.post("/v1/adapters/mix/export", headers=b, json={"format": "hf"}), 404
    )

    assert_openai_error(await client.delete("/v1/adapters/mix", headers=b), 404)
    deleted = await client.delete("/v1/adapters/mix", headers=a)
    assert deleted.json() == {
        "id": mix.json()["id"],
        "name": "mix",
        "object": "adapter.deleted",
        "deleted": True,
    }
    assert state.backend.unloaded == [mix.json()["id"]]
    models = (await client.get("/v1/models", headers=a)).json()["data"]
    assert "mix" not in [m["id"] for m in models]
    assert not (state.data_dir.adapters / mix.json()["id"]).exists()
    assert rows(state) == 2 and files_under(state.data_dir.tmp) == []


@pytest.fixture
def tiny_server(tmp_path, tiny_model_dir):
    from tests.server import Server

    server = Server(
        "--model",
        str(tiny_model_dir),
        "--name",
        "tiny",
        data_dir=tmp_path,
        env={"OWNLLM_MODEL_DEVICE": "cpu", "OWNLLM_DTYPE": "float32"},
    )
    server.wait_ready()
    yield server
    server.stop()


def test_served_over_http_like_peft_and_stacking_equals_cat(
    tiny_server, tiny_model_dir, archives, tmp_path
):
    """The openai client: an imported PEFT adapter answers as PEFT does (greedy, fp32), and
    `extra_body={"adapters": …}` stacking answers as the composed `cat` adapter does."""
    from openai import OpenAI
    from peft import PeftModel
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    url = tiny_server.base_url
    for name in ("r4", "r8"):
        assert (
            httpx.post(
                f"{url}/v1/adapters",
                files={"file": ("a.tar.gz", archives[name])},
                data={"name": name},
                timeout=60,
            ).status_code
            == 200
        )
    body = {"name": "r4+r8", "adapters": [{"id": "r4", "weight": 0.7}, {"id": "r8", "weight": 0.5}]}
    assert httpx.post(f"{url}/v1/adapters/compose", json=body, timeout=60).status_code == 200
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    prompts = ["Hello world", "The quick brown fox", "How are you today?"]

    def complete(model, **extra):
        return [
            client.completions.create(
                model=model,
                prompt=p,
                max_tokens=8,
                temperature=0,
                extra_body={"ignore_eos": True, **extra},
            )
            .choices[0]
            .text
            for p in prompts
        ]

    r4_dir = tmp_path / "r4"
    with tarfile.open(fileobj=io.BytesIO(archives["r4"])) as tf:
        tf.extractall(r4_dir, filter="data")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, r4_dir / "adapter").eval()
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    expected = []
    for p in prompts:
        ids = torch.tensor([tokenizer.encode(p, add_special_tokens=False).ids])
        out = peft_model.generate(
            ids,
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            attention_mask=torch.ones_like(ids),
            pad_token_id=0,
        )
        expected.append(tokenizer.decode(out[0, ids.shape[1] :].tolist()))
    # deltas carry whole UTF-8 characters only, so a byte token left incomplete by
    # max_tokens is not sent, where tokenizer.decode shows it as U+FFFD
    assert complete("r4") == [e.removesuffix("\ufffd") for e in expected]
    stacked = complete("tiny", adapters=[{"id": "r4", "weight": 0.7}, {"id": "r8", "weight": 0.5}])
    assert stacked == complete("r4+r8")
    assert stacked != complete("tiny")


async def test_only_the_admin_publishes_to_every_tenant(api, archives):
    client, tenants, state = api
    files = {"file": ("a.tar.gz", archives["r4"], "application/gzip")}
    refused = await client.post(
        "/v1/adapters",
        headers=tenants.a.headers,
        files=files,
        data={"name": "pub", "is_public": "true"},
    )
    assert_openai_error(refused, 403, "is_public")
    published = await client.post(
        "/v1/adapters",
        headers=tenants.admin_headers,
        files=files,
        data={"name": "pub", "is_public": "true"},
    )
    assert published.status_code == 200 and published.json()["is_public"] is True
    for headers in (tenants.a.headers, tenants.b.headers):
        assert (await client.get("/v1/adapters/pub", headers=headers)).status_code == 200
    assert_openai_error(await client.delete("/v1/adapters/pub", headers=tenants.b.headers), 404)


async def test_an_amplifying_zip_is_refused_at_import(api, tmp_path):
    """A zip of a few KB that unpacks to a 10 MB rank-20000 adapter: 400 from its header."""
    archive = zip_dir(write_lora(tmp_path / "big", 20000), tmp_path / "big.zip")
    assert archive.stat().st_size < 100_000
    client, tenants, state = api
    refused = await upload(
        client, tenants.a.headers, "big", archive.read_bytes(), filename="big.zip"
    )
    assert_openai_error(refused, 400, text="rank is 20000")
    assert "limit of 64 (setting engine.max_lora_rank)" in refused.json()["error"]["message"]
    assert rows(state) == 0
    assert files_under(state.data_dir.adapters) == [] and files_under(state.data_dir.tmp) == []


def set_quota(state, limit: int) -> None:
    state.config = replace(
        state.config, store=replace(state.config.store, tenant_quota_bytes=limit)
    )


async def upload_file(client, headers, data: bytes):
    files = {"file": ("data.jsonl", data, "application/octet-stream")}
    return await client.post(
        "/v1/files", headers=headers, files=files, data={"purpose": "user_data"}
    )


def file_rows(state) -> int:
    with state.db.session() as s:
        return s.scalar(select(func.count()).select_from(File))


async def test_storage_quota_covers_files_and_adapters(api, archives):
    client, tenants, state = api
    a, b = tenants.a.headers, tenants.b.headers
    first = await upload(client, a, "one", archives["r4"])
    size = first.json()["size_bytes"]
    limit = 2 * size + 1000
    set_quota(state, limit)

    streamed = await upload_file(client, a, b"x" * (limit - size + 1))  # stops at the limit
    assert_openai_error(streamed, 429, text=f"{size:,} bytes ({size / (1 << 20):.2f} MiB) used")
    error = streamed.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert f"limit {limit:,} bytes" in error["message"]
    assert file_rows(state) == 0 and files_under(state.data_dir.files) == []
    assert (await upload_file(client, a, b"x" * 1000)).status_code == 200
    assert (await upload(client, a, "two", archives["r4"])).status_code == 200  # at the limit

    third = await upload(client, a, "three", archives["r4"])
    assert_openai_error(third, 429, text=f"{limit:,} bytes (")
    assert f"{size:,} bytes" in third.json()["error"]["message"]  # requested
    assert rows(state) == 2 and len(list(state.data_dir.adapters.iterdir())) == 2
    assert files_under(state.data_dir.tmp) == []
    # another tenant has its own quota; the admin has none
    assert (await upload(client, b, "b-one", archives["r4"])).status_code == 200
    admin = tenants.admin_headers
    assert (await upload_file(client, admin, b"x" * (limit + 1))).status_code == 200
    # deleting frees the space
    assert (await client.delete("/v1/adapters/two", headers=a)).status_code == 200
    assert (await upload(client, a, "three", archives["r4"])).status_code == 200


async def test_names_cannot_squat_ids_and_are_per_tenant(api, archives):
    client, tenants, state = api
    a, b, admin = tenants.a.headers, tenants.b.headers, tenants.admin_headers
    bobs = (await upload(client, b, "tone", archives["r4"])).json()
    squat = await upload(client, a, bobs["id"], archives["r8"])
    assert_openai_error(squat, 400, "name", "form of adapter ids")
    alices = (await upload(client, a, "tone", archives["r8"])).json()  # no 409: B's name
    assert alices["owned_by"] == "acme" and alices["id"] != bobs["id"]
    assert_openai_error(await upload(client, a, "tone", archives["r4"]), 409, "name")

    for headers, mine in ((a, alices), (b, bobs)):
        for ref in ("tone", mine["id"]):
            shown = await client.get(f"/v1/adapters/{ref}", headers=headers)
            assert shown.status_code == 200 and shown.json()["id"] == mine["id"]
        models = {
            m["id"]: m for m in (await client.get("/v1/models", headers=headers)).json()["data"]
        }
        assert models["tone"]["adapter_id"] == mine["id"]
    assert_openai_error(await client.get(f"/v1/adapters/{bobs['id']}", headers=a), 404)
    by_id = await client.get(f"/v1/adapters/{bobs['id']}", headers=admin)
    assert by_id.json()["owned_by"] == "globex"
    ambiguous = await client.get("/v1/adapters/tone", headers=admin)
    assert_openai_error(ambiguous, 400, text="name the adapter by its id")
    listed = {m["id"] for m in (await client.get("/v1/models", headers=admin)).json()["data"]}
    assert {alices["id"], bobs["id"]} <= listed and "tone" not in listed

    assert (await client.delete("/v1/adapters/tone", headers=a)).status_code == 200
    assert (await client.get("/v1/adapters/tone", headers=b)).json()["id"] == bobs["id"]
    assert (await client.get("/v1/adapters/tone", headers=admin)).json()["id"] == bobs["id"]


async def test_exports_are_metered_in_bytes_for_the_caller(api, archives):
    from ownllm.gateway.usage import summarize

    client, tenants, state = api
    ledger = client.gateway.ledger
    a, b = tenants.a.headers, tenants.b.headers
    assert (await upload(client, a, "r4", archives["r4"])).status_code == 200
    lora = await client.post("/v1/adapters/r4/export", headers=a, json={"format": "gguf-lora"})
    merged = await client.post("/v1/adapters/r4/export", headers=a, json={"format": "hf"})
    assert lora.status_code == merged.status_code == 200
    bad = await client.post("/v1/adapters/r4/export", headers=a, json={"format": "onnx"})
    assert bad.status_code == 400
    hidden = await client.post("/v1/adapters/r4/export", headers=b, json={"format": "hf"})
    assert hidden.status_code == 404  # not theirs to see: no row
    ledger.flush()
    (row,) = summarize(state.db, by="key", tenant_id=tenants.a.tenant)
    assert row["key"] == tenants.a.key_id and (row["requests"], row["ok"], row["error"]) == (
        3,
        2,
        1,
    )
    assert row["bytes"] == len(lora.content) + len(merged.content)
    assert row["total_tokens"] == 0
    assert summarize(state.db, by="endpoint", tenant_id=tenants.b.tenant) == []
    ledger.close()
