"""Function tools on /v1/responses over a scripted backend: calls come back as
`function_call` items (whole and streamed as OpenAI's argument deltas), history items and
`function_call_output` reach the model, the conversation with calls is continued by
`previous_response_id`, and bad tools are a 400 naming the Responses field. The call
grammar itself is chat's (tests/engine/test_tool_constraints.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from ownllm.backends.scripted import ScriptedBackend, reply
from tests.api.test_responses import events_of
from tests.api.test_stored_completions import make_client

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'
TIME_CALL = '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'


@pytest.fixture
async def api(tmp_path, two_tenants, tiny_model_dir):
    client, state = make_client(tmp_path, two_tenants, tiny_model_dir)

    def says(text: str) -> None:  # a context long enough for the tools block
        state.backend = ScriptedBackend(reply(text), max_model_len=4096)

    async with client:
        yield client, state, says, two_tenants.a.headers
    client._transport.app.state.gateway.ledger.close()


def prompt_of(state, k: int = -1) -> str:
    ids = state.backend.requests[k].prompt_token_ids
    return state.tokenizer.hf.decode(ids, skip_special_tokens=False)


async def create(client, headers, **body):
    body = {"model": "tiny", "tools": [WEATHER, TIME], **body}
    return await client.post("/v1/responses", json=body, headers=headers)


async def test_a_call_is_a_function_call_item(api):
    client, state, says, a = api
    says(CALL)
    r = await create(client, a, input="Weather in Paris?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed"
    [item] = body["output"]
    assert item["type"] == "function_call" and item["status"] == "completed"
    assert item["name"] == "get_weather" and item["arguments"] == '{"city":"Paris"}'
    assert item["call_id"].startswith("call_") and item["id"].startswith("fc-")
    assert body["tools"][0] == {**WEATHER}
    assert body["tools"][1]["name"] == "get_time" and body["parallel_tool_calls"] is True
    prompt = prompt_of(state)
    assert "<tools>" in prompt and '"name":"get_weather"' in prompt
    assert state.backend.requests[0].constraint is not None


async def test_text_then_parallel_calls_are_items_in_order(api):
    client, _, says, a = api
    says("Let me check.\n" + CALL + "\n" + TIME_CALL)
    body = (await create(client, a, input="Weather and time?")).json()
    kinds = [(i["type"], i.get("name")) for i in body["output"]]
    assert kinds == [("message", None), ("function_call", "get_weather"),
                     ("function_call", "get_time")]  # fmt: skip
    assert body["output"][0]["content"][0]["text"].strip() == "Let me check."
    assert body["output"][2]["arguments"] == "{}"
    assert len({i["call_id"] for i in body["output"][1:]}) == 2


async def test_a_streamed_call_is_argument_deltas(api):
    client, _, says, a = api
    says(CALL)
    r = await create(client, a, input="Weather in Paris?", stream=True)
    events = events_of(r.text)
    types = [e["type"] for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert set(types[3:-3]) == {"response.function_call_arguments.delta"}
    assert "response.output_text.delta" not in types  # the call's text is no message
    added, done = events[2]["item"], events[-3]
    assert added["type"] == "function_call" and added["arguments"] == ""
    assert added["name"] == "get_weather" and added["status"] == "in_progress"
    deltas = "".join(e["delta"] for e in events if e["type"].endswith("arguments.delta"))
    assert deltas == done["arguments"] == '{"city":"Paris"}'
    assert {e["item_id"] for e in events[3:-2]} == {added["id"]}
    assert events[-1]["response"]["output"] == [{**added, "arguments": deltas,
                                                 "status": "completed"}]  # fmt: skip


async def test_a_function_call_output_continues_the_conversation(api):
    client, state, says, a = api
    says(CALL)
    first = (await create(client, a, input="Weather in Paris?")).json()
    call = first["output"][0]
    says("It is 18C in Paris.")
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "18C, sunny"}
    r = await create(client, a, input=[output], previous_response_id=first["id"])
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == "It is 18C in Paris."
    prompt = prompt_of(state)
    assert prompt.index("Weather in Paris?") < prompt.index('"Paris"') < prompt.index("18C, sunny")
    items = (await client.get(f"/v1/responses/{r.json()['id']}/input_items",
                              headers=a)).json()  # fmt: skip
    assert [(i["type"], i["call_id"], i["output"]) for i in items["data"]] == [
        ("function_call_output", call["call_id"], "18C, sunny")
    ]


async def test_history_items_with_calls_reach_the_model(api):
    client, state, says, a = api
    says("Sunny.")
    items = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1",
         "output": [{"type": "input_text", "text": "18C"}]},
    ]  # fmt: skip
    r = await create(client, a, input=items)
    assert r.status_code == 200, r.text
    prompt = prompt_of(state)
    asked = prompt.index("Weather in Paris?")  # after the tools block, which names them all
    assert asked < prompt.index('"name":"get_weather"', asked) < prompt.index("18C")
    listed = (await client.get(f"/v1/responses/{r.json()['id']}/input_items?order=asc",
                               headers=a)).json()  # fmt: skip
    assert [i["type"] for i in listed["data"]] == ["message", "function_call",
                                                   "function_call_output"]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{**WEATHER, "parameters": {"type": "array"}}]}, "tools[0].parameters"),
        ({"tools": [{**WEATHER, "name": "bad name!"}]}, "tools[0].name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "get_weather",
                     "arguments": "{not json"}]}, "input[0]"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ],
)  # fmt: skip
async def test_bad_tools_are_a_400_naming_the_field(api, change, param):
    client, state, says, a = api
    says(CALL)
    r = await create(client, a, **{"input": "Hi", **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert state.backend.requests == []


async def test_tool_choice_forces_the_named_function(api):
    client, state, says, a = api
    says(TIME_CALL)
    choice = {"type": "function", "name": "get_time"}
    r = await create(client, a, input="Hi", tool_choice=choice, parallel_tool_calls=False)
    assert r.status_code == 200, r.text
    assert r.json()["tool_choice"] == choice and r.json()["parallel_tool_calls"] is False
    assert state.backend.requests[0].constraint is not None


async def test_the_official_async_client_reads_calls(api, two_tenants):
    from openai import AsyncOpenAI

    client, _, says, _a = api
    says(CALL)
    app = client._transport.app
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t/v1")
    async with AsyncOpenAI(base_url="http://t/v1", api_key=two_tenants.a.key,
                           http_client=http) as oai:  # fmt: skip
        made = await oai.responses.create(model="tiny", input="Weather?", tools=[WEATHER])
        [call] = made.output
        assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
        async with oai.responses.stream(model="tiny", input="Weather?", tools=[WEATHER]) as s:
            types = [e.type async for e in s]
            final = await s.get_final_response()
        assert "response.function_call_arguments.delta" in types
        assert final.output[0].type == "function_call"
        assert final.output[0].arguments == call.arguments
        assert final.output[0].parsed_arguments == {"city": "Paris"}  # strict: the client parses
