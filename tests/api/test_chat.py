"""POST /v1/chat/completions over a scripted backend: wire shape, streaming, parameters."""

from __future__ import annotations

import json

from ownllm.errors import ContextLengthExceededError, OverloadedError
from ownllm.gateway.principal import ADMIN_TENANT

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}


def sse_events(body: str) -> list:
    assert body.endswith("\n\n")
    events = []
    for block in body.strip("\n").split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_chat_completion_shape(client, fake_state):
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    assert body["system_fingerprint"].startswith("fp_")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, friend!", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    prompt_ids = fake_state.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    assert body["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 5,
        "total_tokens": len(prompt_ids) + 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    request = fake_state.backend.requests[0]
    assert request.prompt_token_ids == prompt_ids
    assert request.cache_scope == ADMIN_TENANT  # open mode is the admin
    assert request.sampling.max_tokens == 5


async def test_text_parts_and_developer_role_render_like_strings(client, fake_state):
    messages = [
        {
            "role": "developer",
            "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        },
        {"role": "user", "content": "Hi"},
    ]
    r = await client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert r.status_code == 200
    expected = fake_state.tokenizer.encode_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert fake_state.backend.requests[0].prompt_token_ids == expected


async def test_sampling_parameters_reach_the_backend(client, fake_state):
    params = {
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["!"],
        "max_completion_tokens": 9,
        "n": 2,
        "top_k": 5,
        "ignore_eos": True,
    }
    r = await client.post("/v1/chat/completions", json={**CHAT, **params})
    assert r.status_code == 200
    sp = fake_state.backend.requests[0].sampling
    assert (sp.temperature, sp.top_p, sp.seed, sp.n, sp.top_k) == (0.3, 0.9, 7, 2, 5)
    assert (sp.presence_penalty, sp.frequency_penalty) == (0.5, -0.5)
    assert sp.stop == ("!",) and sp.max_tokens == 9 and sp.ignore_eos


async def test_default_max_tokens_is_the_rest_of_the_context(client, fake_state):
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    request = fake_state.backend.requests[0]
    assert request.sampling.max_tokens == 256 - len(request.prompt_token_ids)


async def test_n_and_stop(client):
    r = await client.post("/v1/chat/completions", json={**CHAT, "n": 2, "stop": "!"})
    choices = r.json()["choices"]
    assert [c["message"]["content"] for c in choices] == [
        "Hello there, friend",
        "1:Hello there, friend",
    ]
    assert [c["finish_reason"] for c in choices] == ["stop", "stop"]
    assert r.json()["usage"]["completion_tokens"] == 10


async def test_logprobs(client):
    r = await client.post(
        "/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2}
    )
    logprobs = r.json()["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None  # OpenAI's spec requires the key
    content = logprobs["content"]
    assert [t["token"] for t in content] == ["Hello", " there", ",", " friend", "!"]
    assert content[0] == {
        "token": "Hello",
        "logprob": -0.5,
        "bytes": list(b"Hello"),
        "top_logprobs": [
            {"token": "alt0", "logprob": -1.0, "bytes": list(b"alt0")},
            {"token": "alt1", "logprob": -2.0, "bytes": list(b"alt1")},
        ],
    }


async def test_null_fields_count_as_left_out(client):
    """OpenAI's spec makes the optional fields nullable: `"stream": null` is a plain answer."""
    nulls = {"stream": None, "stream_options": None, "n": None, "logprobs": None,
             "temperature": None, "max_completion_tokens": None}  # fmt: skip
    r = await client.post("/v1/chat/completions", json={**CHAT, **nulls})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    (choice,) = r.json()["choices"]
    assert choice["logprobs"] is None and choice["finish_reason"] == "length"


async def test_stream_matches_whole_response_and_ends_with_usage(client):
    whole = (await client.post("/v1/chat/completions", json=CHAT)).json()
    r = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    first, *chunks, usage = events[:-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {"content": "!"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert len({c["id"] for c in events[:-1]}) == 1


async def test_stream_without_usage_has_no_usage_field(client):
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(r.text)
    assert all("usage" not in e for e in events[:-1])


async def test_json_schema_reaches_the_backend_as_a_constraint(client, fake_state):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = await client.post("/v1/chat/completions", json={**CHAT, "response_format": rf})
    assert r.status_code == 200
    constraint = fake_state.backend.requests[0].constraint
    assert constraint is not None and not constraint.is_terminated()


async def test_backend_errors_before_the_stream_are_json_errors(client, fake_state):
    fake_state.backend.error = OverloadedError("the engine queue is full", retry_after=2)
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "server_overloaded"
    fake_state.backend.error = ContextLengthExceededError("too long", param="messages")
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


async def test_mid_stream_error_is_an_sse_error_event(client, fake_state):
    backend = fake_state.backend
    original = backend.generate

    async def failing(request):
        async for delta in original(request):
            yield delta
            raise RuntimeError("secret internal detail")

    backend.generate = failing
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1]["error"]["type"] == "server_error"
    assert "secret" not in r.text
