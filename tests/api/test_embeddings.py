"""POST /v1/embeddings: input forms, encodings, errors (a stub model; the real one is in
tests/models/test_embedding.py and tests/e2e)."""

from __future__ import annotations

import base64
import struct

import pytest

from tests.api.test_request_errors import assert_openai_error


class StubModel:
    dimensions = 3
    max_length = 8

    def count_tokens(self, texts):
        return [len(t.split()) + 2 for t in texts]

    def embed(self, texts):
        return [[float(len(t)), 0.5, -1.0] for t in texts]


@pytest.fixture
def stub(fake_state):
    fake_state.extras["embedding_model"] = StubModel()


async def test_string_and_list_inputs(client, stub):
    r = await client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "ab c"})
    assert r.status_code == 200
    assert r.json() == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [4.0, 0.5, -1.0]}],
        "model": "all-minilm-l6-v2",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    r = await client.post(
        "/v1/embeddings",
        json={"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["a", "bb"]},
    )
    assert [d["embedding"][0] for d in r.json()["data"]] == [1.0, 2.0]
    assert [d["index"] for d in r.json()["data"]] == [0, 1]


async def test_base64_is_little_endian_float32(client, stub):
    body = {"model": "all-minilm-l6-v2", "input": "abc", "encoding_format": "base64"}
    r = await client.post("/v1/embeddings", json=body)
    encoded = r.json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (3.0, 0.5, -1.0)


@pytest.mark.parametrize(
    "change,status,param",
    [
        ({"model": "text-embedding-3-small"}, 404, "model"),
        ({"input": ""}, 400, "input"),
        ({"input": ["ok", ""]}, 400, "input[1]"),
        ({"input": []}, 400, "input"),
        ({"input": [1, 2, 3]}, 400, "input"),
        ({"input": "one two three four five six seven"}, 400, "input"),
        ({"dimensions": 256}, 400, "dimensions"),
        ({"encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": ["x"] * 2049}, 400, "input"),
    ],
)
async def test_bad_embedding_requests(client, stub, change, status, param):
    body = {"model": "all-minilm-l6-v2", "input": "hello", **change}
    r = await client.post("/v1/embeddings", json=body)
    assert_openai_error(r, status, param)
