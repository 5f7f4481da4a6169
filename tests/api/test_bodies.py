"""The gate in front of the app (ownllm.api.bodies): the key and the body's size are checked
on the headers, before any body is read.

"Never read" is checked where it shows: in-process, behind a receive that counts the body
bytes the app took; over a real uvicorn socket, by an answer that arrives while the client
holds its body back. Socket reads wait at most WAIT_S, which only bounds a hang (a server
that waits for the body never answers at all).
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
import pytest

from ownllm.models.cache import PreparedModel
from tests.server import serve_app

WAIT_S = 30
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
JSON_CAP = 4096
BOUNDARY = "b0undary"
FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class CountingApp:
    """The app behind a receive that counts the body bytes the app took."""

    def __init__(self, app) -> None:
        self.app, self.body_bytes = app, 0

    async def __call__(self, scope, receive, send) -> None:
        async def counted():
            message = await receive()
            self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def server_settings(**values):
    """A `configure` for make_gateway: these server settings, set before the app is built."""

    def configure(state) -> None:
        state.config = replace(state.config, server=replace(state.config.server, **values))

    return configure


def client_of(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # an exception out of the app fails the test
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=WAIT_S)


def raw(base_url: str, head: str, body: bytes = b"") -> tuple[int, dict, dict]:
    """Send `head` (request line and headers, no blank line) and `body` on a fresh socket and
    read until the server closes: (status, headers, JSON body)."""
    url = urlsplit(base_url)
    host = f"Host: {url.hostname}:{url.port}"
    request_line, _, rest = head.partition("\r\n")
    with socket.create_connection((url.hostname, url.port), timeout=WAIT_S) as sock:
        sock.sendall(f"{request_line}\r\n{host}\r\n{rest}\r\n\r\n".encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload)


def keyed(key, path: str, *headers: str) -> str:
    return "\r\n".join([f"POST {path} HTTP/1.1", f"Authorization: Bearer {key.key}", *headers])


def part(name: str, value: bytes, filename: str = "") -> bytes:
    """One form part, left open: the bytes sent next may go on with its value."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"\r\n--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"\r\n--{BOUNDARY}--\r\n".encode()


async def test_keyless_upload_is_401_and_the_body_is_never_read(make_gateway):
    app, state = make_gateway()
    counting = CountingApp(app)
    body = form(part("name", b"big"), part("file", b"\0" * (40 << 20), "adapter.tar.gz"))
    async with client_of(counting) as client:
        r = await client.post("/v1/adapters", content=body, headers=FORM)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert counting.body_bytes == 0
    assert r.headers["connection"] == "close"  # the server reads no further after its answer
    assert list(state.data_dir.tmp.iterdir()) == []


async def test_a_key_without_the_scope_is_403_before_the_upload_is_read(make_gateway, two_tenants):
    app, _ = make_gateway()
    narrow = two_tenants.add_key("acme", "narrow", scopes="inference")
    counting = CountingApp(app)
    body = form(part("name", b"x"), part("file", b"\0" * (1 << 20), "adapter.tar.gz"))
    async with client_of(counting) as client:
        r = await client.post("/v1/adapters", content=body, headers={**narrow.headers, **FORM})
    assert r.status_code == 403, r.text
    assert counting.body_bytes == 0


def test_keyless_request_with_a_huge_length_is_answered_without_its_body(make_gateway):
    app, _ = make_gateway()
    with serve_app(app, lifespan="off") as url:
        status, headers, body = raw(
            url,
            "POST /v1/chat/completions HTTP/1.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000000",
        )
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert headers["connection"] == "close"


def test_keyed_request_over_the_json_cap_is_413_without_its_body(make_gateway, two_tenants):
    app, _ = make_gateway(server_settings(max_json_body_bytes=JSON_CAP))
    with serve_app(app, lifespan="off") as url:
        status, _, body = raw(
            url,
            keyed(
                two_tenants.a,
                "/v1/chat/completions",
                "Content-Type: application/json",
                f"Content-Length: {JSON_CAP + 1}",
            ),
        )
    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    assert "server.max_json_body_bytes" in body["error"]["message"]


def test_a_chunked_body_past_the_cap_is_413_and_the_route_gives_up(
    make_gateway, two_tenants, caplog
):
    app, _ = make_gateway(server_settings(max_json_body_bytes=JSON_CAP))
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"  # 1 KiB (0x400)
    caplog.set_level(logging.WARNING)
    with serve_app(app, lifespan="off") as url:
        uvicorn_log = logging.getLogger("uvicorn")  # it does not propagate to the root logger
        uvicorn_log.addHandler(caplog.handler)
        try:
            status, headers, body = raw(
                url,
                keyed(
                    two_tenants.a,
                    "/v1/chat/completions",
                    "Content-Type: application/json",
                    "Transfer-Encoding: chunked",
                ),
                chunk * 5,  # 5 KiB of a body that is never finished
            )
        finally:
            uvicorn_log.removeHandler(caplog.handler)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert headers["connection"] == "close"
    assert [r.getMessage() for r in caplog.records] == []  # no 500, no ASGI error


def test_a_body_that_stops_sending_is_408(make_gateway, two_tenants):
    app, _ = make_gateway(server_settings(body_timeout_s=0.2))
    with serve_app(app, lifespan="off") as url:
        status, _, body = raw(
            url,
            keyed(
                two_tenants.a,
                "/v1/chat/completions",
                "Content-Type: application/json",
                "Content-Length: 100",
            ),
            b'{"messages": [',
        )
    assert status == 408 and body["error"]["code"] == "request_timeout"


async def test_normal_requests_work_and_the_key_is_resolved_once(
    make_gateway, two_tenants, monkeypatch
):
    import ownllm.api.bodies
    import ownllm.gateway.auth

    calls = []
    for module in (ownllm.api.bodies, ownllm.gateway.auth):

        async def counted(auth, token, real=module.authenticate, where=module.__name__):
            calls.append(where)
            return await real(auth, token)

        monkeypatch.setattr(module, "authenticate", counted)
    app, state = make_gateway(server_settings(max_json_body_bytes=JSON_CAP))
    chat = {**CHAT, "model": state.model_id}
    async with client_of(app) as client:
        r = await client.post("/v1/chat/completions", json=chat, headers=two_tenants.a.headers)
        assert r.status_code == 200, r.text
        assert calls == ["ownllm.api.bodies"]  # the dependency took the gate's principal
        assert (await client.get("/health")).status_code == 200  # public: no key needed
        assert (await client.get("/v1/nothing-here")).status_code == 404  # as before
        r = await client.post("/v1/chat/completions", json=chat)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def test_open_mode_needs_no_key(client):
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "tiny"})
    assert r.status_code == 200, r.text


@pytest.fixture
def upload_gateway(make_gateway, tiny_model_dir):
    def configure(state) -> None:
        state.model = PreparedModel("tiny", tiny_model_dir, "b" * 64, from_cache=False, seconds=0)
        tuning = replace(state.config.tuning, max_file_bytes=1000)
        state.config = replace(state.config, tuning=tuning)

    return make_gateway(configure)


async def test_a_file_over_its_cap_is_413_before_the_body(upload_gateway, two_tenants):
    app, _ = upload_gateway
    counting = CountingApp(app)
    async with client_of(counting) as client:
        r = await client.post(
            "/v1/files",
            headers={**two_tenants.a.headers, **FORM},
            content=b"x" * (1000 + 65 * 1024),  # httpx sends its Content-Length
        )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "file_too_large"
    assert "tuning.max_file_bytes" in r.json()["error"]["message"]
    assert counting.body_bytes == 0


async def test_a_chunked_upload_past_the_cap_leaves_nothing(upload_gateway, two_tenants):
    """The file part (under its own limit) is being written when the body passes the cap:
    the route hears the client leave and deletes it."""
    app, state = upload_gateway
    written = []

    async def body():
        yield part("purpose", b"fine-tune") + part("file", b"x" * 500, "t.jsonl")
        written.extend(state.data_dir.tmp.iterdir())  # the app asks for more: it has these
        for i in range(70):  # 70 KiB more: past max_file_bytes + 64 KiB of form
            yield part(f"pad{i}", b"p" * 1000)

    async with client_of(app) as client:
        headers = {**two_tenants.a.headers, **FORM}
        r = await client.post("/v1/files", headers=headers, content=body())
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "file_too_large"
    assert written, "the file part was not being written"
    assert list(state.data_dir.tmp.iterdir()) == []
    assert list(state.data_dir.files.glob("*")) == []


async def test_adapter_upload_names_bad_fields_and_leaves_nothing(upload_gateway, two_tenants):
    app, state = upload_gateway
    headers = {**two_tenants.a.headers, **FORM}
    archive = part("file", b"not an archive", "a.tar.gz")
    async with client_of(app) as client:
        r = await client.post("/v1/adapters", headers=headers, content=form(archive))
        assert r.status_code == 400 and r.json()["error"]["param"] == "name"
        body = form(part("name", b"n"), part("is_public", b"maybe"), archive)
        r = await client.post("/v1/adapters", headers=headers, content=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "is_public"
    assert list(state.data_dir.tmp.iterdir()) == []
