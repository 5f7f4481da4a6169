"""Tool calls through a real `ownllm serve` with the official client, sync and async,
whole and streamed (its stream helper accumulates the deltas). The model is the tiny random
one: whatever it would say, the constraint makes its calls valid."""

from __future__ import annotations

import json

import jsonschema
import pytest

WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Oslo", "Lima", "Pune"]}, "days": {"type": "integer",
                   "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}  # fmt: skip
TIMER = {
    "type": "object",
    "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 60}},
    "required": ["minutes"],
    "additionalProperties": False,
}
SCHEMAS = {"get_forecast": WEATHER, "set_timer": TIMER}
TOOLS = [
    {"type": "function", "function": {"name": name, "description": name, "parameters": schema,
                                      "strict": True}}
    for name, schema in SCHEMAS.items()
]  # fmt: skip
ASK = [{"role": "user", "content": "What is the forecast in Oslo for 3 days?"}]


def assert_valid_call(call) -> None:
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name in SCHEMAS
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(3))
def test_required_gives_a_valid_call(client, seed):
    r = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=120, seed=seed, temperature=1.0,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert_valid_call(call)


def test_stream_helper_accumulates_the_call(client):
    with client.chat.completions.stream(
        model="tiny", messages=ASK, tools=TOOLS, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "set_timer"}},
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds
    assert "tool_calls.function.arguments.done" in kinds
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "set_timer"
    assert_valid_call(call)
    assert call.function.parsed_arguments == json.loads(call.function.arguments)


def test_plain_stream_deltas_add_up_to_the_whole_call(client):
    kwargs = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                  parallel_tool_calls=False, max_tokens=120, seed=7, temperature=0.0)  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, arguments, ids = None, "", set()
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for delta_call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            assert delta_call.index == 0
            if delta_call.id:
                ids.add(delta_call.id)
                name = delta_call.function.name
            arguments += delta_call.function.arguments or ""
    assert len(ids) == 1
    assert (name, arguments) == (whole.function.name, whole.function.arguments)


async def test_async_named_call_and_the_answer_after_the_result(aclient):
    r = await aclient.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_forecast"}},
    )  # fmt: skip
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_forecast"
    assert_valid_call(call)
    history = [
        *ASK,
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 4 C"},
    ]
    after = await aclient.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    choice = after.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
