import hashlib

import pytest
from fastapi import FastAPI

from ownllm.gateway.auth import get_principal
from ownllm.gateway.principal import Principal
from tests.tuning.app_state import client_for, make_state


@pytest.fixture
async def files_client(tmp_path, tiny_model_dir, db_url):
    state = make_state(tmp_path, tiny_model_dir, db_url, max_file_bytes=1000)
    async with client_for(state) as client:
        client.state = state
        yield client
    state.db.close()


def as_tenant(client, tenant: str) -> None:
    app: FastAPI = client._transport.app
    app.dependency_overrides[get_principal] = lambda: Principal(tenant_id=tenant)


async def upload(client, content: bytes, purpose="fine-tune", name="train.jsonl"):
    return await client.post(
        "/v1/files", files={"file": (name, content)}, data={"purpose": purpose}
    )


async def test_upload_records_sha256_and_streams_content_back(files_client, tmp_path):
    content = b'{"messages": []}\n' * 10
    r = await upload(files_client, content)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bytes"] == len(content) and body["filename"] == "train.jsonl"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (tmp_path / "files" / body["id"]).read_bytes() == content
    got = await files_client.get(f"/v1/files/{body['id']}/content")
    assert got.content == content
    assert (await files_client.get(f"/v1/files/{body['id']}")).json()["id"] == body["id"]


async def test_too_large_is_413_and_leaves_nothing(files_client, tmp_path):
    r = await upload(files_client, b"x" * 1001)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "file_too_large" and r.json()["error"]["param"] == "file"
    assert list((tmp_path / "files").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []


async def test_missing_purpose_or_file_names_the_field(files_client):
    r = await files_client.post("/v1/files", files={"file": ("a", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = await files_client.post(
        "/v1/files", files={"other": ("a", b"x")}, data={"purpose": "fine-tune"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = await upload(files_client, b"x", purpose="nonsense")
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"


async def test_cursor_pagination_purpose_filter_and_delete(files_client):
    ids = [(await upload(files_client, b"%d" % i)).json()["id"] for i in range(5)]
    await upload(files_client, b"r", purpose="fine-tune-results")
    page = (await files_client.get("/v1/files?purpose=fine-tune&limit=2&order=asc")).json()
    assert [f["id"] for f in page["data"]] == ids[:2] and page["has_more"]
    rest = (await files_client.get(f"/v1/files?purpose=fine-tune&order=asc&after={ids[1]}")).json()
    assert [f["id"] for f in rest["data"]] == ids[2:] and not rest["has_more"]
    desc = (await files_client.get("/v1/files?purpose=fine-tune")).json()
    assert [f["id"] for f in desc["data"]] == ids[::-1]
    deleted = await files_client.delete(f"/v1/files/{ids[0]}")
    assert deleted.json() == {"id": ids[0], "object": "file", "deleted": True}
    assert (await files_client.get(f"/v1/files/{ids[0]}")).status_code == 404


async def test_another_tenants_file_is_404_and_unlisted(files_client):
    as_tenant(files_client, "acme")
    file_id = (await upload(files_client, b"secret")).json()["id"]
    as_tenant(files_client, "globex")
    assert (await files_client.get(f"/v1/files/{file_id}")).status_code == 404
    assert (await files_client.get(f"/v1/files/{file_id}/content")).status_code == 404
    assert (await files_client.delete(f"/v1/files/{file_id}")).status_code == 404
    assert (await files_client.get("/v1/files")).json()["data"] == []


async def test_empty_pages_and_file_objects_have_the_shape_openais_spec_requires(files_client):
    empty = (await files_client.get("/v1/files")).json()
    # `first_id` and `last_id` are required strings in the spec: "" on an empty page, not null
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], "", "")
    created = (await upload(files_client, b"x")).json()
    listed = (await files_client.get("/v1/files")).json()["data"]
    retrieved = (await files_client.get(f"/v1/files/{created['id']}")).json()
    for file in (created, *listed, retrieved):
        assert "status_details" not in file  # the spec allows a string there, never null
        assert file["status"] == "processed"


async def test_malformed_multipart_is_a_400_naming_the_file(files_client, tmp_path):
    r = await files_client.post(
        "/v1/files",
        content=b"--BB\r\n\xa9\xff\r\n\r\nx\r\n--BB--\r\n",
        headers={"content-type": "multipart/form-data; boundary=BB"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "file"
    assert list((tmp_path / "files").glob("*")) == []
