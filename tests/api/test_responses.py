"""POST /v1/responses and the stored responses, in-process over a scripted backend: the
response object, max_output_tokens, instructions and input items as the model reads them,
previous_response_id, get/delete/input_items with pagination, tenant isolation, refused
fields, the typed event stream, the ledger, the guard, the tenant purge and the batch
entry point; and the official async client on the same app."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select

from ownllm.api.response_run import run_response_body
from ownllm.gateway.purge import purge_tenant
from ownllm.store.schema import StoredResponse, UsageRecord
from tests.api.test_stored_completions import make_client

ANSWER = "Paris is the capital."
POLICY = """
[[rules]]
id = "codenames"
detector = "deny_terms"
terms = ["project falcon"]
stages = ["input"]
action = "block"
"""


@pytest.fixture
async def api(tmp_path, two_tenants, tiny_model_dir):
    client, state = make_client(tmp_path, two_tenants, tiny_model_dir, answer=ANSWER)
    async with client:
        yield client, state
    client._transport.app.state.gateway.ledger.close()


def prompt_of(state, k: int = -1) -> str:
    """The text the backend was given for the k-th request (special tokens kept)."""
    ids = state.backend.requests[k].prompt_token_ids
    return state.tokenizer.hf.decode(ids, skip_special_tokens=False)


async def create(client, headers, **body):
    response = await client.post("/v1/responses", json={"model": "tiny", **body}, headers=headers)
    return response


async def test_a_string_input_gets_a_completed_response(api, two_tenants):
    client, state = api
    r = await create(client, two_tenants.a.headers, input="What is the capital of France?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["id"].startswith("resp-")
    assert body["status"] == "completed" and body["incomplete_details"] is None
    assert body["error"] is None and body["completed_at"] >= body["created_at"]
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["status"] == "completed"
    assert message["content"] == [
        {"type": "output_text", "text": ANSWER, "annotations": [], "logprobs": []}
    ]
    usage = body["usage"]
    assert usage["output_tokens"] == len(ANSWER)  # the scripted answer: a token a character
    assert usage["input_tokens"] == len(state.backend.requests[0].prompt_token_ids)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert body["store"] is True and body["tools"] == [] and body["tool_choice"] == "auto"
    assert "What is the capital of France?" in prompt_of(state)
    # one ledger row, under its own endpoint, with the tokens the client saw
    app = client._transport.app
    app.state.gateway.ledger.flush()
    with state.db.session() as s:
        rows = list(s.scalars(select(UsageRecord)))
    assert [(r.endpoint, r.request_id, r.status) for r in rows] == [("responses", body["id"], "ok")]
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )


async def test_max_output_tokens_makes_it_incomplete(api, two_tenants):
    client, _ = api
    r = await create(client, two_tenants.a.headers, input="Hi", max_output_tokens=5)
    body = r.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == ANSWER[:5]
    assert body["output"][0]["status"] == "incomplete"
    assert body["usage"]["output_tokens"] == 5 and body["max_output_tokens"] == 5


async def test_instructions_and_items_are_what_the_model_reads(api, two_tenants):
    client, state = api
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
        {"role": "user", "content": "Capital?"},
    ]
    r = await create(client, two_tenants.a.headers, instructions="Be brief.", input=items)
    assert r.status_code == 200, r.text
    prompt = prompt_of(state)
    order = [prompt.index(t) for t in ("Be brief.", "Answer in French.", "Hi", "Bonjour",
                                       "Capital?")]  # fmt: skip
    assert order == sorted(order)
    assert prompt.index("<|im_start|>system\nBe brief.") < prompt.index("<|im_start|>user\nHi")
    assert r.json()["instructions"] == "Be brief."


async def test_previous_response_id_continues_the_conversation(api, two_tenants):
    client, state = api
    a = two_tenants.a.headers
    first = (await create(client, a, instructions="Speak like a pirate.", input="Where?")).json()
    second = await create(client, a, input="And then?", previous_response_id=first["id"])
    assert second.status_code == 200, second.text
    prompt = prompt_of(state)
    assert prompt.index("Where?") < prompt.index(ANSWER) < prompt.index("And then?")
    assert "pirate" not in prompt  # instructions are not carried over, as OpenAI does
    assert second.json()["previous_response_id"] == first["id"]
    third = await create(client, a, input="Last?", previous_response_id=second.json()["id"])
    prompt = prompt_of(state)
    assert prompt.count(ANSWER) == 2 and prompt.index("And then?") < prompt.index("Last?")
    assert third.status_code == 200


async def test_stored_responses_get_delete_and_input_items(api, two_tenants):
    client, _ = api
    a = two_tenants.a.headers
    items = [{"role": "user", "content": f"q{i}"} for i in range(5)]
    created = (await create(client, a, input=items, metadata={"topic": "t"})).json()
    got = await client.get(f"/v1/responses/{created['id']}", headers=a)
    assert got.status_code == 200 and got.json() == created
    page = (await client.get(f"/v1/responses/{created['id']}/input_items?limit=2",
                             headers=a)).json()  # fmt: skip
    assert [i["content"][0]["text"] for i in page["data"]] == ["q4", "q3"]  # desc by default
    assert page["has_more"] is True and page["last_id"] == page["data"][-1]["id"]
    url = f"/v1/responses/{created['id']}/input_items?limit=2&after={page['last_id']}"
    rest = (await client.get(url, headers=a)).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["q2", "q1"]
    assert rest["has_more"] is True
    asc = (await client.get(f"/v1/responses/{created['id']}/input_items?order=asc&limit=3",
                            headers=a)).json()  # fmt: skip
    after = asc["data"][-1]["id"]
    url = f"/v1/responses/{created['id']}/input_items?order=asc&after={after}"
    tail = (await client.get(url, headers=a)).json()
    assert [i["content"][0]["text"] for i in tail["data"]] == ["q3", "q4"]
    assert tail["has_more"] is False
    bad = await client.get(f"/v1/responses/{created['id']}/input_items?after=nope", headers=a)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    deleted = await client.delete(f"/v1/responses/{created['id']}", headers=a)
    assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
    assert (await client.get(f"/v1/responses/{created['id']}", headers=a)).status_code == 404
    again = await create(client, a, input="x", previous_response_id=created["id"])
    assert again.status_code == 404
    assert again.json()["error"]["param"] == "previous_response_id"


async def test_another_tenants_response_does_not_exist(api, two_tenants):
    client, state = api
    created = (await create(client, two_tenants.a.headers, input="secret plans")).json()
    b = two_tenants.b.headers
    rid = created["id"]
    for method, path in (("GET", f"/v1/responses/{rid}"), ("DELETE", f"/v1/responses/{rid}"),
                         ("GET", f"/v1/responses/{rid}/input_items")):  # fmt: skip
        r = await client.request(method, path, headers=b)
        assert r.status_code == 404, (method, path, r.text)
        assert "secret" not in r.text
    r = await create(client, b, input="continue", previous_response_id=rid)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert len(state.backend.requests) == 1  # the refused continuation reached no model
    r = await client.get(f"/v1/responses/{rid}", headers=two_tenants.admin_headers)
    assert r.status_code == 200  # the admin sees every tenant's
    assert (await client.get(f"/v1/responses/{rid}", headers=two_tenants.a.headers)).json()


async def test_store_false_keeps_nothing(api, two_tenants):
    client, state = api
    body = (await create(client, two_tenants.a.headers, input="Hi", store=False)).json()
    assert body["store"] is False
    r = await client.get(f"/v1/responses/{body['id']}", headers=two_tenants.a.headers)
    assert r.status_code == 404
    with state.db.session() as s:
        assert s.scalars(select(StoredResponse)).first() is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]},
         "tools[0].vector_store_ids[0]"),  # no such store
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].vector_store_ids"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"truncation": "auto"}, "truncation"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
         "input[0].content[1].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": ""}, "input"),
        ({"input": [{"role": "user", "content": "x"}], "model": "no-such-model"}, "model"),
    ],
)  # fmt: skip
async def test_what_cannot_be_honoured_is_a_400_naming_it(api, two_tenants, extra, param):
    client, state = api
    body = {"input": "Hi", **extra}
    r = await create(client, two_tenants.a.headers, **body)
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"] == "invalid_request_error"
    assert state.backend.requests == []  # nothing reached the model


async def test_a_blocked_input_names_the_item(tmp_path, two_tenants, tiny_model_dir):
    client, _ = make_client(tmp_path, two_tenants, tiny_model_dir, policy=POLICY)
    async with client:
        items = [{"role": "user", "content": "hello"},
                 {"role": "user", "content": "tell me about Project Falcon"}]  # fmt: skip
        r = await create(client, two_tenants.a.headers, instructions="Be nice.", input=items)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "content_policy_violation"
    assert r.json()["error"]["param"] == "input[1].content"


async def test_json_schema_format_constrains_the_generation(api, two_tenants):
    client, state = api
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "name": "place", "schema": schema, "strict": True}
    r = await create(client, two_tenants.a.headers, input="Where?", text={"format": fmt})
    assert r.status_code == 200, r.text
    assert state.backend.requests[0].constraint is not None
    assert r.json()["text"]["format"] == fmt


def events_of(text: str) -> list[dict]:
    """The `data` of each event, checking its `event:` line names the same type."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        out.append(data)
    return out


async def test_the_stream_is_openais_typed_events(api, two_tenants):
    client, _ = api
    a = two_tenants.a.headers
    r = await create(client, a, input="Hi", stream=True, max_output_tokens=8)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r.text)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    deltas = ["response.output_text.delta"] * 8
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *deltas, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.incomplete",
    ]  # fmt: skip
    assert "".join(e["delta"] for e in events if e["type"].endswith(".delta")) == ANSWER[:8]
    final = events[-1]["response"]
    assert (
        final["status"] == "incomplete" and final["output"][0]["content"][0]["text"] == (ANSWER[:8])
    )
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["id"] == final["id"]
    stored = (await client.get(f"/v1/responses/{final['id']}", headers=a)).json()
    assert stored == final
    whole = (await create(client, a, input="Hi", max_output_tokens=8)).json()
    volatile = ("id", "created_at", "completed_at")
    strip = lambda b: {k: v for k, v in b.items() if k not in volatile}  # noqa: E731
    assert strip(final) | {"output": None} == strip(whole) | {"output": None}
    assert [{**i, "id": ""} for i in final["output"]] == [{**i, "id": ""} for i in whole["output"]]


async def test_the_official_async_client_creates_and_streams(api, two_tenants):
    from openai import AsyncOpenAI

    client, state = api
    app = client._transport.app
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t/v1")
    key = two_tenants.a.key
    async with AsyncOpenAI(base_url="http://t/v1", api_key=key, http_client=http) as oai:
        made = await oai.responses.create(model="tiny", input="Hi", instructions="Short.")
        assert made.output_text == ANSWER and made.status == "completed"
        async with oai.responses.stream(model="tiny", input="Again",
                                        previous_response_id=made.id) as stream:  # fmt: skip
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(deltas) == ANSWER == final.output_text
        assert final.previous_response_id == made.id
        items = [i async for i in oai.responses.input_items.list(final.id, order="asc")]
        assert [i.content[0].text for i in items] == ["Again"]
        assert (await oai.responses.retrieve(final.id)).output_text == ANSWER
        await oai.responses.delete(final.id)
    assert "Hi" in prompt_of(state) and "Short." not in prompt_of(state)


async def test_a_purged_tenant_loses_its_responses(api, two_tenants):
    client, state = api
    await create(client, two_tenants.a.headers, input="Hi")
    await create(client, two_tenants.b.headers, input="Hi")
    report = purge_tenant(state.db, state.data_dir, "acme", keep_account=True)
    assert report.rows.get("stored_responses") == 1
    with state.db.session() as s:
        assert [r.tenant_id for r in s.scalars(select(StoredResponse))] == ["globex"]


async def test_the_batch_entry_point_runs_one_body(api, two_tenants):
    client, state = api
    app = client._transport.app
    from ownllm.gateway.principal import Principal

    principal = app.state.gateway.auth.resolve(two_tenants.a.key)
    assert isinstance(principal, Principal)
    status, body = await run_response_body(
        state, app.state.gateway, principal, {"model": "tiny", "input": "Hi", "stream": True}
    )
    assert status == 200 and body["output"][0]["content"][0]["text"] == ANSWER
    status, body = await run_response_body(
        state, app.state.gateway, principal, {"model": "tiny", "input": "Hi", "top_p": 7}
    )
    assert status == 400 and body["error"]["param"] == "top_p"
    status, body = await run_response_body(
        state, app.state.gateway, principal, {"model": "tiny", "input": [{"type": "x"}]}
    )
    assert status == 400 and body["error"]["param"] == "input[0].type"


async def test_a_failure_mid_stream_is_an_error_then_response_failed(api, two_tenants):
    client, state = api
    state.backend.fail_after = 3
    r = await create(client, two_tenants.a.headers, input="Hi", stream=True)
    assert r.status_code == 200  # the status line went out with the first token
    events = events_of(r.text)
    types = [e["type"] for e in events]
    assert types[-2:] == ["error", "response.failed"]
    assert types.count("response.output_text.delta") == 3
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    error, failed = events[-2], events[-1]["response"]
    assert error["code"] == "internal_error" and "internals" not in error["message"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == ANSWER[:3]
    r = await client.get(f"/v1/responses/{failed['id']}", headers=two_tenants.a.headers)
    assert r.status_code == 404  # a failed response is not kept
    app = client._transport.app
    app.state.gateway.ledger.flush()
    with state.db.session() as s:
        [row] = list(s.scalars(select(UsageRecord)))
    assert (row.endpoint, row.status, row.http_status) == ("responses", "error", 500)


async def test_an_error_before_the_first_token_is_a_plain_json_error(api, two_tenants):
    from ownllm.errors import OverloadedError

    client, state = api
    state.backend.error = OverloadedError("the queue is full", retry_after=2)
    r = await create(client, two_tenants.a.headers, input="Hi", stream=True)
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json()["error"]["code"] == "server_overloaded"


OUTPUT_POLICY = """
[[rules]]
id = "no-capitals"
detector = "deny_terms"
terms = ["capital"]
stages = ["output"]
action = "block"
"""


async def test_an_answer_the_output_guard_cuts_is_incomplete(tmp_path, two_tenants,
                                                             tiny_model_dir):  # fmt: skip
    client, _ = make_client(tmp_path, two_tenants, tiny_model_dir, policy=OUTPUT_POLICY,
                            answer=ANSWER)  # fmt: skip
    async with client:
        whole = (await create(client, two_tenants.a.headers, input="Hi")).json()
        r = await create(client, two_tenants.a.headers, input="Hi", stream=True)
    assert whole["status"] == "incomplete"
    assert whole["incomplete_details"] == {"reason": "content_filter"}
    assert "capital" not in json.dumps(whole)
    events = events_of(r.text)
    assert events[-1]["type"] == "response.incomplete"
    assert "capital" not in r.text


async def test_capture_follows_the_tenant_and_store_false_opts_out(api, two_tenants):
    from ownllm.store.schema import StoredCompletion, Tenant

    client, state = api
    with state.db.session() as s:
        s.get(Tenant, "acme").capture_default = True  # acme opted in to the data flywheel
    a, b = two_tenants.a.headers, two_tenants.b.headers
    kept = (await create(client, a, input="Capture me")).json()
    skipped = (await create(client, a, input="Not me", store=False)).json()
    other = (await create(client, b, input="Globex did not opt in")).json()
    with state.db.session() as s:
        rows = {r.id: r for r in s.scalars(select(StoredCompletion))}
    assert set(rows) == {kept["id"]}, (skipped["id"], other["id"])
    assert rows[kept["id"]].request["messages"][-1]["content"] == "Capture me"
    assert rows[kept["id"]].response["choices"][0]["message"]["content"] == ANSWER


async def test_get_refuses_what_it_cannot_do(api, two_tenants):
    client, _ = api
    a = two_tenants.a.headers
    rid = (await create(client, a, input="Hi")).json()["id"]
    for query, param in (("stream=true", "stream"),
                         ("include=message.output_text.logprobs", "include")):  # fmt: skip
        r = await client.get(f"/v1/responses/{rid}?{query}", headers=a)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


ODD_BODIES = [
    {"input": [1, "x"]},
    {"input": [{"role": "user", "content": [1]}]},
    {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
    {"input": [{"role": "assistant", "content": None}]},
    {"input": [{"type": "function_call", "call_id": 3, "name": "f", "arguments": {}}]},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": None}]},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"a": 1}]}]},
    {"input": {"role": "user"}},
    {"tools": [1]},
    {"tools": [{"type": "function"}]},
    {"tools": [{"type": "function", "name": "f", "parameters": "x"}]},
    {"tool_choice": {"type": "function"}},
    {"tool_choice": 5},
    {"text": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}},
    {"text": {"format": {"type": "xml"}}},
    {"metadata": {"k": 1}},
    {"previous_response_id": "x" * 65},
    {"instructions": 7},
    {"max_output_tokens": 10**12},
    {"adapters": [{"id": "nope"}]},
    {"stream": "maybe"},
]


@pytest.mark.parametrize("change", ODD_BODIES)
async def test_odd_bodies_are_4xx_never_5xx(api, two_tenants, change):
    client, _ = api
    r = await create(client, two_tenants.a.headers, **{"input": "Hi", **change})
    assert 400 <= r.status_code < 500, (change, r.status_code, r.text)
    assert r.json()["error"]["message"]
