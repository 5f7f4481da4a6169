"""The Responses API with the official `openai` client, sync and async, against a real
server process (tiny random model): create, the stream helpers, previous_response_id,
json_schema output, retrieve / delete / input_items, and refused fields."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.e2e.test_openai_client import SCHEMA
from tests.e2e.test_tools import SCHEMAS, TIMER

# EOS ignored and greedy: a random model may end at any token, so the length is set
FIXED = {"model": "tiny", "temperature": 0.0, "max_output_tokens": 8,
         "extra_body": {"ignore_eos": True}}  # fmt: skip
PERSON = {"format": {"type": "json_schema", "name": "person", "schema": SCHEMA, "strict": True}}
EVENTS = [
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added",
]  # fmt: skip
ENDING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def test_create_retrieve_items_and_delete(client):
    response = client.responses.create(input="Tell me about the fox.", instructions="Be brief.",
                                       metadata={"run": "e2e"}, **FIXED)  # fmt: skip
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 8 and response.usage.input_tokens > 0
    assert response.output_text and response.output[0].type == "message"
    assert response.metadata == {"run": "e2e"} and response.instructions == "Be brief."
    assert client.responses.retrieve(response.id) == response
    items = list(client.responses.input_items.list(response.id))
    assert [(i.type, i.role, i.content[0].text) for i in items] == [
        ("message", "user", "Tell me about the fox.")
    ]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_the_stream_helper_accumulates_the_final_response(client):
    with client.responses.stream(input="A person as JSON.", text=PERSON, model="tiny",
                                 max_output_tokens=200, temperature=0.0) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == EVENTS and types[-4:] == [*ENDING, "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.status == "completed" and final.output_text == text
    jsonschema.validate(json.loads(text), SCHEMA)  # the grammar held and closed the object
    assert client.responses.retrieve(final.id).output_text == text


def test_a_streamed_response_equals_the_whole_one(client):
    whole = client.responses.create(input="Count with me.", **FIXED)
    stream = client.responses.create(input="Count with me.", stream=True, **FIXED)
    events = list(stream)
    assert [e.type for e in events][:4] == EVENTS
    assert [e.type for e in events][-4:] == [*ENDING, "response.incomplete"]
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == whole.output_text  # greedy: the same tokens
    volatile = {"id", "created_at", "completed_at", "output", "usage"}
    assert final.model_dump(exclude=volatile) == whole.model_dump(exclude=volatile)
    counts = {"input_tokens", "output_tokens", "total_tokens"}  # the second hits the cache
    assert final.usage.model_dump(include=counts) == whole.usage.model_dump(include=counts)
    assert [o.model_dump(exclude={"id"}) for o in final.output] == [
        o.model_dump(exclude={"id"}) for o in whole.output
    ]


def test_previous_response_id_continues_and_unknown_ids_are_404(client):
    first = client.responses.create(input="My name is Ana.", **FIXED)
    second = client.responses.create(input="What is my name?", previous_response_id=first.id,
                                     **FIXED)  # fmt: skip
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(input="x", previous_response_id="resp-nope", **FIXED)
    assert e.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"background": True}, "background"),
    ],
)
def test_what_ownllm_cannot_honour_is_a_400_naming_it(client, change, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(input="Hi", **{**FIXED, **change})
    assert e.value.body["param"] == param


async def test_async_create_and_stream(aclient):
    made = await aclient.responses.create(input="Hi there.", **FIXED)
    assert made.status == "incomplete" and made.usage.output_tokens == 8
    async with aclient.responses.stream(input="A person as JSON.", text=PERSON, model="tiny",
                                        max_output_tokens=200, temperature=0.0,
                                        previous_response_id=made.id) as stream:  # fmt: skip
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.previous_response_id == made.id
    jsonschema.validate(json.loads(final.output_text), SCHEMA)
    await aclient.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        await aclient.responses.retrieve(made.id)


# function tools in the Responses shape; the tiny model's calls are valid by the grammar
TOOLS = [
    {"type": "function", "name": name, "description": name, "parameters": schema, "strict": True}
    for name, schema in SCHEMAS.items()
]


@pytest.mark.parametrize("seed", range(2))
def test_required_gives_a_valid_function_call_item(client, seed):
    r = client.responses.create(
        model="tiny", input="The forecast in Oslo for 3 days?", tools=TOOLS,
        tool_choice="required", parallel_tool_calls=False, max_output_tokens=120,
        temperature=1.0, extra_body={"seed": seed},
    )  # fmt: skip
    assert r.status == "completed"
    [call] = r.output
    assert call.type == "function_call" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    answer = client.responses.create(
        model="tiny", previous_response_id=r.id, tools=TOOLS, tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        max_output_tokens=8, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [o.type for o in answer.output] == ["message"]  # "none": no call, an answer


async def test_async_stream_of_a_named_call(aclient):
    async with aclient.responses.stream(
        model="tiny", input="Set a timer.", tools=TOOLS, max_output_tokens=120,
        tool_choice={"type": "function", "name": "set_timer"},
    ) as stream:  # fmt: skip
        types = [e.type async for e in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    [call] = final.output
    assert call.name == "set_timer"
    jsonschema.validate(json.loads(call.arguments), TIMER)
