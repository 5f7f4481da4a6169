"""Stored completions through the real pipeline (in-process app, scripted backend):
`store: true` → list/get/messages → feedback → delete, tenant isolation, and the guard at
the input and output stages (blocks, streamed redaction that never leaks)."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import text

from ownllm.api.app import create_app
from ownllm.backends.scripted import ScriptedBackend, reply
from ownllm.models.tokenizer import Tokenizer
from tests.tenants import gateway_state

CARD, EMAIL = "4111 1111 1111 1111", "ana.lima@example.com"
ANSWER = f"Sure: your card {CARD} is on file and we mail {EMAIL} today."

OUTPUT_POLICY = """
[[rules]]
id = "pii.card"
detector = "payment_card"
stages = ["output", "capture"]
action = "redact"

[[rules]]
id = "pii.email"
detector = "email"
stages = ["output", "capture"]
action = "redact"

[[rules]]
id = "codenames"
detector = "deny_terms"
terms = ["project falcon"]
stages = ["input", "output"]
action = "block"
"""


def make_client(tmp_path, tenants, tiny_model_dir, policy: str | None = None, answer=ANSWER):
    state = gateway_state(tmp_path, tenants, backend=ScriptedBackend(reply(answer)))
    state.tokenizer = Tokenizer.from_dir(tiny_model_dir)
    state.config = replace(state.config, model=replace(state.config.model, name="tiny"))
    if policy is not None:
        path = tmp_path / "policy.toml"
        path.write_text(policy)
        state.config = replace(
            state.config, guard=replace(state.config.guard, policy_file=str(path))
        )
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test"), state


@pytest.fixture
async def client(tmp_path, two_tenants, tiny_model_dir):
    c, _ = make_client(tmp_path, two_tenants, tiny_model_dir)
    async with c:
        yield c


def chat(question: str, **extra) -> dict:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 128,
        **extra,
    }  # fmt: skip  (room for the whole answer)


async def test_store_true_then_list_get_messages_feedback_delete(client, two_tenants):
    a, b = two_tenants.a.headers, two_tenants.b.headers
    r = await client.post("/v1/chat/completions", headers=a,
                          json=chat(f"My card is {CARD}", store=True, metadata={"team": "billing"}))  # fmt: skip
    assert r.status_code == 200, r.text
    cid = r.json()["id"]
    assert r.json()["choices"][0]["message"]["content"] == ANSWER  # default policy: output as is
    await client.post("/v1/chat/completions", headers=a, json=chat("not stored"))
    await client.post("/v1/chat/completions", headers=a, json=chat("off", store=False))

    listing = (await client.get("/v1/chat/completions", headers=a)).json()
    assert [c["id"] for c in listing["data"]] == [cid]
    assert (listing["first_id"], listing["last_id"], listing["has_more"]) == (cid, cid, False)
    stored = listing["data"][0]
    assert stored["choices"][0]["message"]["refusal"] is None  # required by OpenAI's spec
    assert stored["choices"][0]["message"]["content"] == (
        "Sure: your card [CARD] is on file and we mail [EMAIL] today."
    )
    assert stored["metadata"] == {"team": "billing"}
    filtered = await client.get(
        "/v1/chat/completions", headers=a, params={"metadata[team]": "sales"}
    )
    assert filtered.json()["data"] == []
    messages = (await client.get(f"/v1/chat/completions/{cid}/messages", headers=a)).json()
    assert messages["data"] == [
        {"id": f"{cid}-0", "refusal": None, "role": "user", "content": "My card is [CARD]"}
    ]

    # another tenant: not found, not listed, cannot rate or delete
    assert (await client.get(f"/v1/chat/completions/{cid}", headers=b)).status_code == 404
    empty = (await client.get("/v1/chat/completions", headers=b)).json()
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], "", "")
    r = await client.post(f"/v1/chat/completions/{cid}/feedback", headers=b, json={"rating": 1})
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    assert (await client.delete(f"/v1/chat/completions/{cid}", headers=b)).status_code == 404

    r = await client.post(f"/v1/chat/completions/{cid}/feedback", headers=a, json={"rating": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rating"
    r = await client.post(f"/v1/chat/completions/{cid}/feedback", headers=a,
                          json={"rating": 2, "correction": f"We never repeat card numbers like {CARD}."})  # fmt: skip
    assert r.status_code == 200
    assert r.json()["feedback"] == {
        "rating": 2,
        "correction": "We never repeat card numbers like [CARD].",
    }
    r = await client.post(
        f"/v1/chat/completions/{cid}", headers=a, json={"metadata": {"team": "x"}}
    )
    assert r.json()["metadata"] == {"team": "x"}

    r = await client.delete(f"/v1/chat/completions/{cid}", headers=a)
    assert r.json() == {"object": "chat.completion.deleted", "id": cid, "deleted": True}
    assert (await client.get(f"/v1/chat/completions/{cid}", headers=a)).status_code == 404


async def test_openai_client_lists_and_pages_stored_completions(client, two_tenants):
    import openai

    for i in range(3):
        await client.post("/v1/chat/completions", headers=two_tenants.a.headers,
                          json=chat(f"q{i}", store=True, metadata={"run": "r1"}))  # fmt: skip
    sdk = openai.AsyncOpenAI(
        api_key=two_tenants.a.key, base_url="http://test/v1", http_client=client
    )
    page = await sdk.chat.completions.list(limit=2, metadata={"run": "r1"})
    assert len(page.data) == 2 and page.has_more
    ids = [c.id async for c in sdk.chat.completions.list(limit=2, metadata={"run": "r1"})]
    assert len(ids) == 3 and len(set(ids)) == 3
    one = await sdk.chat.completions.retrieve(ids[0])
    assert one.id == ids[0]
    msgs = await sdk.chat.completions.messages.list(ids[0])
    assert msgs.data[0].content == "q0"
    deleted = await sdk.chat.completions.delete(ids[0])
    assert deleted.deleted


@pytest.mark.parametrize("is_remote", [False, True])
async def test_input_block_is_400_content_policy_and_recorded(
    tmp_path, two_tenants, tiny_model_dir, is_remote
):
    c, state = make_client(tmp_path, two_tenants, tiny_model_dir, OUTPUT_POLICY)
    state.backend.is_remote = is_remote
    async with c:
        r = await c.post("/v1/chat/completions", headers=two_tenants.a.headers,
                         json=chat("Status of PROJECT FALCON?"))  # fmt: skip
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("content_policy_violation", "messages[0].content")
    if is_remote:
        assert state.backend.requests == []  # it never left the premises
    else:  # the guard ran while a local backend started it; none of it reached the client
        assert_stopped(state.backend)
    with state.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT stage, action, rule_ids FROM guard_events")).all()
    assert [(s, a, json.loads(ids) if isinstance(ids, str) else ids) for s, a, ids in rows] == [
        ("input", "block", ["codenames"])
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_output_redaction_never_leaks_split_pii(
    tmp_path, two_tenants, tiny_model_dir, stream
):
    c, _ = make_client(tmp_path, two_tenants, tiny_model_dir, OUTPUT_POLICY)
    async with c:
        r = await c.post("/v1/chat/completions", headers=two_tenants.a.headers,
                         json=chat("card?", stream=stream))  # fmt: skip
    expected = "Sure: your card [CARD] is on file and we mail [EMAIL] today."
    if not stream:
        assert r.json()["choices"][0]["message"]["content"] == expected
        return
    pieces, reasons = [], []
    for line in r.text.splitlines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            pieces.append(choice["delta"].get("content") or "")
            reasons.append(choice["finish_reason"])
    assert "".join(pieces) == expected
    assert reasons[-1] == "stop"
    sent = ""
    for piece in pieces:  # at no point was any part of the card or e-mail sent
        sent += piece
        assert "4111" not in sent and "ana.lima" not in sent and "@example" not in sent
    assert len([p for p in pieces if p]) > 10  # still streamed, not held to the end


@pytest.mark.parametrize("stream", [False, True])
async def test_output_block_ends_with_content_filter(tmp_path, two_tenants, tiny_model_dir, stream):
    answer = "The plan: Project Falcon launches in May with card 4111111111111111."
    c, state = make_client(tmp_path, two_tenants, tiny_model_dir, OUTPUT_POLICY, answer)
    async with c:
        r = await c.post("/v1/chat/completions", headers=two_tenants.a.headers,
                         json=chat("plan?", stream=stream))  # fmt: skip
    if stream:
        chunks = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
        content = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
        finish_reason = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = r.json()["choices"][0]
        content, finish_reason = choice["message"]["content"], choice["finish_reason"]
    assert (content, finish_reason) == ("The plan: ", "content_filter")
    with state.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT stage, action, counts FROM guard_events")).all()
    counts = [json.loads(n) if isinstance(n, str) else n for _, _, n in rows]
    assert [(stage, action) for stage, action, _ in rows] == [("output", "block")]
    assert counts == [{"codenames": 1}]


async def test_completions_endpoint_prompts_pass_the_input_guard(
    tmp_path, two_tenants, tiny_model_dir
):
    c, state = make_client(tmp_path, two_tenants, tiny_model_dir, OUTPUT_POLICY)
    async with c:
        r = await c.post("/v1/completions", headers=two_tenants.a.headers,
                         json={"model": "tiny", "prompt": ["fine", "project falcon"], "max_tokens": 4})  # fmt: skip
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
        "content_policy_violation", "prompt[1]",
    )  # fmt: skip
    assert_stopped(state.backend)


def assert_stopped(backend) -> None:
    """The (local) backend was handed the blocked call while the guard read it, and runs
    none of it any more (aborted, or finished unseen: the client got only the 400)."""
    assert backend.requests and not backend.running
