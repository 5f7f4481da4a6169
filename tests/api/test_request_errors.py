"""Every bad request is a 400 (or 404) in OpenAI's shape with `param` naming the field."""

from __future__ import annotations

import pytest

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 5}

CHAT_CASES = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": []}, "messages"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0].type",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
        "response_format",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        "tools[0].function.parameters",
    ),  # fmt: skip
    ({"logit_bias": {"50256": -100}}, "logit_bias"),  # past the tiny model's 512 tokens
    ({"logit_bias": {"dog": 5}}, "logit_bias"),
    ({"logit_bias": {"-3": 5}}, "logit_bias"),
    ({"logit_bias": {"1.5": 5}}, "logit_bias"),
    ({"logit_bias": {"7": 100.5}}, "logit_bias"),
    ({"logit_bias": {"7": -101}}, "logit_bias"),
    ({"logit_bias": {"7": "high"}}, "logit_bias"),
    ({"logit_bias": [7, 5]}, "logit_bias"),
    ({"logit_bias": {str(t): 1 for t in range(1025)}}, "logit_bias"),
    ({"seed": 2**70}, "seed"),
    ({"adapters": [{"id": "a"}] * 5}, "adapters"),
]


def assert_openai_error(r, status: int, param: str | None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["message"]
    return error


@pytest.mark.parametrize("change,param", CHAT_CASES, ids=[p for _, p in CHAT_CASES])
async def test_bad_chat_parameter_is_400_naming_it(client, change, param):
    r = await client.post("/v1/chat/completions", json={**CHAT, **change})
    error = assert_openai_error(r, 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "change,param",
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok", ""]}, "prompt[1]"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 21}, "logprobs"),
        ({"n": 100, "prompt": ["a", "b"]}, "n"),
    ],
)
async def test_bad_completion_parameter_is_400_naming_it(client, change, param):
    r = await client.post("/v1/completions", json={**COMPLETION, **change})
    assert_openai_error(r, 400, param)


async def test_missing_field_and_bad_json_are_400_not_422(client):
    r = await client.post("/v1/chat/completions", json={"model": "tiny"})
    assert_openai_error(r, 400, "messages")
    r = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(r, 400, None)
    r = await client.post("/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400


async def test_unknown_model_is_404_model_not_found(client):
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"})
    assert_openai_error(r, 404, "model", "model_not_found")
    r = await client.post("/v1/completions", json={**COMPLETION, "model": "ft:nope:x:y:z"})
    assert_openai_error(r, 404, "model", "model_not_found")
    r = await client.post("/v1/chat/completions", json={**CHAT, "adapters": [{"id": "nope"}]})
    assert_openai_error(r, 404, "adapters[0].id", "model_not_found")


async def test_context_too_long_is_400_context_length_exceeded(client):
    r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10_000})
    error = assert_openai_error(r, 400, "messages", "context_length_exceeded")
    assert "maximum context length is 256 tokens" in error["message"]
    r = await client.post("/v1/completions", json={**COMPLETION, "prompt": "Hi " * 300})
    assert_openai_error(r, 400, "prompt", "context_length_exceeded")


async def test_a_server_fault_is_500_without_internals(client, fake_state):
    fake_state.backend.error = RuntimeError("/secret/path exploded")
    r = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(r, 500, None, "internal_error")
    assert "secret" not in r.text and error["type"] == "server_error"


def _nested_schema(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "schema",
    [
        _nested_schema(400),
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}},
    ],
    ids=["400 levels deep", "5000 properties"],
)
async def test_deep_or_huge_json_schema_is_400_naming_it(client, caplog, schema):
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with caplog.at_level("ERROR"):
        r = await client.post("/v1/chat/completions", json={**CHAT, "response_format": rf})
    assert_openai_error(r, 400, "response_format.json_schema")
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]


async def test_a_body_nested_past_the_json_parser_is_400(client):
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    body = '{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "metadata": ' + deep
    r = await client.post(
        "/v1/chat/completions", content=body + "}", headers={"content-type": "application/json"}
    )
    assert_openai_error(r, 400, None)
