"""Property-based chat requests with every parameter in and out of range, against the real
engine: whatever the combination, the answer is a 200 or a 4xx in OpenAI's shape, never a
5xx, and a 200 has exactly n choices."""

from __future__ import annotations

import json

import httpx
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.e2e.conftest import ADMIN_KEY  # noqa: E402

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def nested(levels):
    schema = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


HUGE = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
FORMATS = [
    None,
    {"type": "text"},
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minimum": "x"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(400)}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": HUGE}},
    {"type": "yaml"},
]


def maybe(strategy):
    return st.one_of(st.none(), strategy)


message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.one_of(st.text(max_size=40), st.none()),
    }
)
bodies = st.fixed_dictionaries(
    {"model": st.just("tiny"), "messages": st.lists(message, min_size=1, max_size=3)},
    optional={
        "n": st.integers(-1, 130),
        "temperature": st.one_of(st.floats(-1, 3), st.text(max_size=3)),
        "top_p": st.floats(-0.5, 1.5),
        "top_k": st.integers(-1, 10**7),
        "min_p": st.floats(-0.5, 1.5),
        "repetition_penalty": st.floats(-1, 12),
        "presence_penalty": st.floats(-3, 3),
        "frequency_penalty": st.floats(-3, 3),
        "seed": st.integers(-(2**64), 2**64),
        "max_tokens": maybe(st.integers(-1, 150)),
        "stop": maybe(st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=6))),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(-1, 25),
        "ignore_eos": st.booleans(),
        "stream": st.booleans(),
        "response_format": st.sampled_from(FORMATS),
    },
)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_any_parameter_combination_is_200_or_4xx(fuzz_server, body):
    with httpx.Client(base_url=fuzz_server.base_url, timeout=120) as http:
        r = http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif body.get("stream"):
        assert r.text.endswith("data: [DONE]\n\n"), r.text[-500:]
    else:
        assert len(r.json()["choices"]) == body.get("n", 1)
        if (body.get("response_format") or {}).get("type") == "json_schema":
            choice = r.json()["choices"][0]
            no_stop = not body.get("stop")  # a client's stop string may cut the JSON
            if (
                choice["finish_reason"] == "stop"
                and body["response_format"] == FORMATS[3]
                and no_stop
            ):
                assert isinstance(json.loads(choice["message"]["content"])["a"], int)


valid_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant"]),
        "content": st.text(max_size=40),
    }
)
valid_bodies = st.fixed_dictionaries(
    {"model": st.just("tiny"), "messages": st.lists(valid_message, min_size=1, max_size=3)},
    optional={
        "n": st.integers(1, 8),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 10**6),
        "min_p": st.floats(0, 1),
        "repetition_penalty": st.floats(0.01, 10),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "max_tokens": maybe(st.integers(1, 60)),
        "stop": maybe(st.lists(st.text(min_size=1, max_size=3), max_size=4)),
        "logprobs": st.booleans(),
        "ignore_eos": st.booleans(),
        "stream": st.booleans(),
        "response_format": st.sampled_from(FORMATS[:4]),
    },
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=valid_bodies)
def test_any_valid_parameter_combination_is_served(fuzz_server, body):
    with httpx.Client(base_url=fuzz_server.base_url, timeout=120) as http:
        r = http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
    if r.status_code == 400:  # the only refusal a valid request may get: it does not fit
        assert r.json()["error"]["code"] == "context_length_exceeded", r.text
        return
    assert r.status_code == 200, (body, r.text)
    if body.get("stream"):
        assert r.text.endswith("data: [DONE]\n\n") and '"error"' not in r.text, r.text[-500:]
    else:
        choices = r.json()["choices"]
        assert len(choices) == body.get("n", 1)
        assert all(c["finish_reason"] in ("stop", "length") for c in choices)
        if body.get("response_format") == FORMATS[3] and not body.get("stop"):
            for c in choices:  # (a stop string the client gave may cut the JSON, as in OpenAI)
                if c["finish_reason"] == "stop":
                    assert isinstance(json.loads(c["message"]["content"])["a"], int)
