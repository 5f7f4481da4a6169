"""Tool calls and logit_bias against OpenAI's published spec: a forced call with a bias, whole
and streamed, on chat and on the Responses API, each body, chunk and event validated
against the spec's own schemas (as test_openai_spec.py does for the rest).

Its own server: the fuzzing server's 128-token context cannot hold the fallback format's
tools block (~400 tiny-model tokens), so a request with tools there is a 400
context_length_exceeded; here the context is 1024 and generations stay short. Skips,
with the reason, where `../shared` is absent.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e import test_openai_spec as spec_run
from tests.e2e.conftest import ADMIN_KEY, start_server
from tests.e2e.test_openai_spec import EVENT_SCHEMAS, SPEC, _errors

spec_schema = spec_run.spec_schema  # the fixture: `name` -> a validator of the spec's schema

pytestmark = pytest.mark.skipif(
    not SPEC.exists(), reason=f"OpenAI's spec is not at {SPEC} (a copy of `shared` beside the repo)"
)


@pytest.fixture(scope="module")
def api(tmp_path_factory, e2e_model_dir):
    env = {"OWNLLM_MODEL_MAX_MODEL_LEN": "1024", "OWNLLM_ADMIN_KEY": ADMIN_KEY}
    server = start_server(tmp_path_factory, e2e_model_dir, env=env)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        with httpx.Client(base_url=f"{server.base_url}/v1", headers=headers, timeout=60) as c:
            yield c
    finally:
        server.stop()


PING = {"type": "object", "properties": {}, "additionalProperties": False}
TOOL_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Ping?"}],
             "tools": [{"type": "function", "function": {"name": "ping", "parameters": PING}}],
             "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 128,
             "logit_bias": {"5": -100, "7": 3}}  # fmt: skip
TOOL_RESPONSE = {"model": "tiny", "input": "Ping?", "max_output_tokens": 128,
                 "tools": [{"type": "function", "name": "ping", "parameters": PING}],
                 "tool_choice": "required", "parallel_tool_calls": False}  # fmt: skip


def test_tool_calls_and_logit_bias_match_openais_spec(api, spec_schema):
    """A forced call (one, and `{}` the only arguments PING allows: the grammar closes it
    well within max_tokens) with a logit_bias, whole and streamed, on chat and on the
    Responses API: every body and chunk and event as OpenAI's spec describes them."""
    done = api.post("/chat/completions", json=TOOL_CHAT)
    assert done.status_code == 200, done.text
    assert not _errors(spec_schema("CreateChatCompletionResponse"), done.json())
    (choice,) = done.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "ping", "arguments": "{}"}
    with api.stream("POST", "/chat/completions", json={**TOOL_CHAT, "stream": True}) as response:
        assert response.status_code == 200
        data = [line[len("data: ") :] for line in response.iter_lines() if line]
    chunks = [json.loads(d) for d in data[:-1]]
    validator = spec_schema("CreateChatCompletionStreamResponse")
    for chunk in chunks:
        assert not _errors(validator, chunk), chunk
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)

    created = api.post("/responses", json=TOOL_RESPONSE)
    assert created.status_code == 200, created.text
    assert not _errors(spec_schema("Response"), created.json())
    assert [item["type"] for item in created.json()["output"]] == ["function_call"]
    with api.stream("POST", "/responses", json={**TOOL_RESPONSE, "stream": True}) as response:
        assert response.status_code == 200
        data = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data")]
    events = [json.loads(d) for d in data]
    assert "response.function_call_arguments.done" in {e["type"] for e in events}
    for event in events:
        assert not _errors(spec_schema(EVENT_SCHEMAS[event["type"]]), event), event
