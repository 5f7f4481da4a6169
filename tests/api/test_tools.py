"""Function tools on /v1/chat/completions over a scripted backend: what the model is shown,
the calls read back (whole and streamed), and every bad request as a 400 naming its param.
The constraint itself is tested on real tokens in tests/engine/test_tool_constraints.py."""

from __future__ import annotations

import pytest

from ownllm.backends.scripted import ScriptedBackend, reply
from ownllm.models.tool_format import render_conversation
from tests.api.test_chat import sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CHAT = {"model": "tiny", "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 200}
CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'


@pytest.fixture
def says(fake_state):
    """Make the backend answer `text` (on a context long enough for the tools block)."""

    def set_reply(text: str) -> None:
        fake_state.backend = ScriptedBackend(reply(text), max_model_len=4096)

    set_reply("")
    return set_reply


async def test_a_call_comes_back_as_tool_calls(client, fake_state, says):
    says(CALL)
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and len(call["id"]) == 29
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    # the model was shown the tools, in the fallback format (the tiny template takes none)
    request = fake_state.backend.requests[0]
    prompt = fake_state.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
    assert "<tools>" in prompt and '"name":"get_weather"' in prompt
    assert request.constraint is not None


async def test_text_before_calls_is_content_and_parallel_calls_get_their_own_ids(client, says):
    second = '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'
    says("Let me check.\n" + CALL + "\n" + second)
    r = await client.post("/v1/chat/completions", json=CHAT)
    message = r.json()["choices"][0]["message"]
    assert message["content"] == "Let me check."
    names = [c["function"]["name"] for c in message["tool_calls"]]
    assert names == ["get_weather", "get_time"]
    assert message["tool_calls"][1]["function"]["arguments"] == "{}"
    assert len({c["id"] for c in message["tool_calls"]}) == 2


async def test_a_plain_answer_with_tools_is_content(client, says):
    says("It is sunny.")
    r = await client.post("/v1/chat/completions", json=CHAT)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "It is sunny."
    assert "tool_calls" not in choice["message"] or choice["message"]["tool_calls"] is None


async def test_streamed_calls_are_deltas_as_openai_sends_them(client, says):
    says("Hm. " + CALL)
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Hm. "
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    first = calls[0]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(c) == {"index", "function"} for c in calls[1:])  # fragments only
    assert len(calls) > 2  # one character a token: the arguments come in fragments
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"city":"Paris"}'
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1]]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    assert deltas[-1] == {}


async def test_history_with_calls_and_results_is_rendered(client, fake_state, says):
    says("It is 21 C in Paris.")
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "21 C, sunny"},
    ]
    r = await client.post("/v1/chat/completions", json={**CHAT, "messages": history})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "It is 21 C in Paris."
    prompt_ids = fake_state.backend.requests[0].prompt_token_ids
    prompt = fake_state.tokenizer.decode(prompt_ids, skip_special_tokens=False)
    assert CALL in prompt
    assert '<tool_response>{"tool_call_id":"call_abc","content":"21 C, sunny"}' in prompt
    messages = [
        ASK[0],
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "21 C, sunny"},
    ]  # fmt: skip
    expected = render_conversation(fake_state.tokenizer, messages, CHAT["tools"])
    assert prompt_ids == fake_state.tokenizer.encode_chat_text(expected)


BAD = [
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    (
        {"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": 3}}]},
        "tools[1].function.parameters",
    ),
    (
        {
            "tools": [
                WEATHER,
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}},
                    },
                },
            ]
        },
        "tools[1].function.parameters",
    ),  # fmt: skip
    ({"tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": None, "tool_choice": "auto"}, "tool_choice"),
    ({"tools": None, "parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    (
        {"messages": [{"role": "tool", "content": "21 C"}]},
        "messages[0].tool_call_id",
    ),
    (
        {
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),  # fmt: skip
    (
        {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
        "messages[0].tool_calls",
    ),
]


@pytest.mark.parametrize(("change", "param"), BAD)
async def test_bad_tool_requests_are_400_naming_the_param(client, fake_state, says, change, param):
    r = await client.post("/v1/chat/completions", json={**CHAT, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert fake_state.backend.requests == []


async def test_tool_choice_none_and_named_reach_the_constraint(client, fake_state, says):
    says("Fine.")
    for choice in ("none", {"type": "function", "function": {"name": "get_time"}}):
        r = await client.post("/v1/chat/completions", json={**CHAT, "tool_choice": choice})
        assert r.status_code == 200, r.text
    none, named = (r.constraint for r in fake_state.backend.requests)
    tokenizer = fake_state.tokenizer
    # a named function: the first token can only begin its call
    call = '<tool_call>{"name":"get_time","arguments":'
    for token_id in _first_allowed(fake_state, named):
        assert call.startswith(tokenizer.decode([token_id])), tokenizer.decode([token_id])
    # none: plain text is allowed, opening a call is not
    assert all(none.accept_token(t) for t in tokenizer.encode("Fine <tool_"))
    assert not all(none.accept_token(t) for t in tokenizer.encode("call>"))


def _first_allowed(state, constraint) -> list[int]:
    """The tokens the constraint allows first."""
    from ownllm.engine.sampler import allocate_bitmask, bitmask_to_allowed

    vocab_size = state.backend.model_info.vocab_size
    bitmask = allocate_bitmask(1, vocab_size)
    constraint.fill_bitmask(bitmask, 0)
    return bitmask_to_allowed(bitmask, vocab_size)[0].nonzero().flatten().tolist()
