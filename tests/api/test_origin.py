"""Browser guards (ownllm/api/origin.py): a loopback server answers only loopback Host
names (DNS rebinding), and a page of another origin cannot post forms — a file to
/v1/files — while the openai client and same-origin pages keep working."""

from __future__ import annotations

from dataclasses import replace

import httpx
import openai
import pytest

from ownllm.api.app import create_app
from ownllm.api.origin import OriginCheck, host_name
from ownllm.backends.scripted import ScriptedBackend
from ownllm.config import load_config
from tests.tuning.app_state import make_state

LOOPBACK = "http://127.0.0.1:8000"  # the in-process client's "socket" is then loopback
JSONL = b'{"messages": [{"role": "user", "content": "hi"}]}\n'


@pytest.fixture
def state(tmp_path, tiny_model_dir, db_url):
    state = make_state(tmp_path, tiny_model_dir, db_url)
    state.backend = ScriptedBackend()
    yield state
    state.db.close()


def client_for(state, base_url: str = LOOPBACK, **server) -> httpx.AsyncClient:
    if server:
        config = state.config
        state.config = replace(config, server=replace(config.server, **server))
    app = create_app(state, start_engine=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def upload(client: httpx.AsyncClient, **headers: str):
    files = {"file": ("train.jsonl", JSONL)}
    return client.post("/v1/files", files=files, data={"purpose": "fine-tune"}, headers=headers)


async def test_dns_rebinding_host_is_refused_on_loopback(state):
    async with client_for(state) as client:
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/files")]:
            r = await client.request(method, path, headers={"Host": "evil.example:8000"})
            assert r.status_code == 403, path
            error = r.json()["error"]
            assert error.keys() == {"message", "type", "param", "code"}
            assert (error["type"], error["code"]) == ("permission_error", "host_not_allowed")
            assert "server.allowed_hosts" in error["message"]
        listed = await client.get("/v1/files")
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.2"]
)
async def test_loopback_host_names_pass(state, host):
    async with client_for(state) as client:
        r = await client.get("/v1/models", headers={"Host": host})
    assert r.status_code == 200, r.text


async def test_allowed_hosts_widen_the_check_and_a_public_server_is_not_checked(state):
    async with client_for(state, allowed_hosts="llm.internal, proxy.example.") as client:
        ok = await client.get("/v1/models", headers={"Host": "llm.internal:443"})
        also = await client.get("/v1/models", headers={"Host": "Proxy.Example"})
        other = await client.get("/v1/models", headers={"Host": "evil.example"})
    assert (ok.status_code, also.status_code, other.status_code) == (200, 200, 403)
    async with client_for(state, allowed_hosts="*") as client:
        assert (await client.get("/v1/models", headers={"Host": "any.example"})).status_code == 200
    async with client_for(state, host="0.0.0.0", allowed_hosts="") as client:
        # public: any Host passes this check (a keyless public server would then ask for a
        # key on /v1/models, so a route that needs none shows it)
        assert (await client.get("/health", headers={"Host": "llm.corp"})).status_code == 200


async def test_cross_site_form_posts_are_refused(state):
    async with client_for(state) as client:
        cross = await upload(client, Origin="https://evil.example")
        fetch_meta = await upload(client, **{"Sec-Fetch-Site": "cross-site"})
        sibling = await upload(client, Origin="http://127.0.0.1:3000")  # another local app
        opaque = await upload(client, Origin="null")  # a sandboxed iframe or file:// page
        text = await client.post(
            "/v1/chat/completions",
            content=b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}',
            headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
        )
        json_without_key = await client.post(
            "/v1/admin/keys",
            json={"tenant": "acme", "name": "stolen"},
            headers={"Origin": "https://evil.example"},
        )
        listed = await client.get("/v1/files")
    for r in (cross, fetch_meta, sibling, opaque, text, json_without_key):
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "cross_site_request"
    assert "evil.example" in cross.json()["error"]["message"]
    assert listed.json()["data"] == []


async def test_same_origin_pages_and_the_openai_client_still_work(state, tmp_path):
    async with client_for(state) as client:
        same = await upload(client, Origin=LOOPBACK, **{"Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200, same.text
        # a page elsewhere that sends a key with JSON had to pass a CORS preflight first
        keyed = await client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Origin": "https://app.example", "Authorization": "Bearer sk-dev"},
        )
        assert keyed.status_code == 200, keyed.text
        sdk = openai.AsyncOpenAI(base_url=f"{LOOPBACK}/v1", api_key="sk-dev", http_client=client)
        reply = await sdk.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        path = tmp_path / "train.jsonl"
        path.write_bytes(JSONL)
        created = await sdk.files.create(file=path.open("rb"), purpose="fine-tune")
        models = await sdk.models.list()
    assert reply.choices[0].message.content and created.bytes == len(JSONL)
    assert "tiny" in [m.id for m in models.data]


async def test_a_refusal_never_reads_the_body():
    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app ran")

    async def receive():
        raise AssertionError("the body was read")

    sent = []

    async def send(message):
        sent.append(message)

    guard = OriginCheck(app, server=load_config(env={}).server)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/files",
        "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"evil.example"), (b"content-length", b"999999")],
    }
    await guard(scope, receive, send)
    start = sent[0]
    assert start["status"] == 403 and (b"connection", b"close") in start["headers"]


def test_host_name_strips_port_brackets_case_and_the_root_dot():
    assert host_name("[::1]:8000") == "::1"
    assert host_name("LocalHost.:80") == "localhost"
    assert host_name("::1") == "::1"
    assert host_name(" llm.internal ") == "llm.internal"
