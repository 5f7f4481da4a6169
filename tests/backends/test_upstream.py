"""The streamed upstream client (and the openai backend over it) against a real loopback
HTTP/1.1 server whose every byte is scripted here: chunked and content-length bodies,
keep-alive reuse seen from the server's side, a pooled connection the server dropped, and
a server that dies mid-stream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest

from ownllm.backends.base import GenerateRequest, ModelInfo, SamplingParams
from ownllm.backends.openai_compat import OpenAIBackend
from ownllm.backends.upstream import UpstreamClient, UpstreamError
from ownllm.config import BackendConfig
from ownllm.errors import BackendStreamError, BackendUnavailableError, InvalidRequestError

WORDS = ["Hello", " there", ",", " friend", "!"]


def event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def answer_events(num_words: int) -> list[bytes]:
    words = WORDS[:num_words]
    events = [event(w, "length" if i == len(words) - 1 else None) for i, w in enumerate(words)]
    usage = {"prompt_tokens": 3, "completion_tokens": len(words)}
    return [
        *events,
        b"data: " + json.dumps({"usage": usage}).encode() + b"\n\n",
        b"data: [DONE]\n\n",
    ]


@dataclass
class Server:
    """A loopback HTTP/1.1 server: `mode` says how it answers a POST (`chunked`,
    `length`, `die` after two events, `hangup` before any, `error` a 400); `once`: it closes a connection
    instead of answering a second request on it (a keep-alive timeout racing the client)."""

    mode: str = "chunked"
    once: bool = False
    connections: int = 0
    bodies: list[dict] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            for num_request in range(1_000):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if self.once and num_request:
                    return  # closed without an answer
                self.bodies.append(json.loads(body))
                if not await self.answer(writer, self.bodies[-1].get("max_tokens", 5)):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, writer: asyncio.StreamWriter, num_words: int) -> bool:
        """Write one answer; whether the connection stays open."""
        events = answer_events(num_words)
        if self.mode == "hangup":
            writer.transport.abort()
            return False
        if self.mode == "error":
            raw = json.dumps({"error": {"message": "bad top_p", "param": "top_p"}}).encode()
            writer.write(head("400 Bad Request", f"content-length: {len(raw)}") + raw)
        elif self.mode == "length":
            raw = b"".join(events)
            writer.write(head("200 OK", f"content-length: {len(raw)}") + raw)
        else:
            writer.write(head("200 OK", "transfer-encoding: chunked"))
            for i, data in enumerate(events):
                if self.mode == "die" and i == 2:
                    writer.transport.abort()  # the server process is gone
                    return False
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.001)  # one event a read, as a real server sends them
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def head(status: str, size_header: str) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: text/event-stream\r\n{size_header}\r\n\r\n".encode()


@pytest.fixture
async def server():
    """(the Server, its base URL)."""
    state = Server()
    listening = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield state, f"http://127.0.0.1:{port}"
    listening.close()
    for writer in state.writers:
        writer.close()


def client_for(url: str) -> UpstreamClient:
    return UpstreamClient(url, headers={}, read_timeout_s=30, max_connections=4)


async def read_all(client: UpstreamClient, max_tokens: int = 5) -> list[bytes]:
    async with client.stream("/v1/completions", {"prompt": "hi", "max_tokens": max_tokens}) as r:
        assert r.status_code == 200
        lines = [line async for line in r.lines() if line]
    return lines


def backend_for(url: str) -> OpenAIBackend:
    cfg = BackendConfig(name="up", kind="openai", url=url)
    return OpenAIBackend(cfg, model_info=ModelInfo("tiny", 256, 512, "float32"))


def completion(max_tokens: int = 5) -> GenerateRequest:
    return GenerateRequest(
        "r1", [1, 2, 3], SamplingParams(max_tokens=max_tokens), model="tiny", prompt_text="Hi"
    )


@pytest.mark.parametrize("mode", ["chunked", "length"])
async def test_both_kinds_of_body_stream_every_event_and_reuse_one_connection(server, mode):
    state, url = server
    state.mode = mode
    client = client_for(url)
    first = await read_all(client)
    second = await read_all(client, max_tokens=3)
    assert first == [line.rstrip(b"\n") for line in answer_events(5)]
    assert len(second) == 5 and second[-1] == b"data: [DONE]"
    assert state.bodies == [{"prompt": "hi", "max_tokens": 5}, {"prompt": "hi", "max_tokens": 3}]
    assert state.connections == 1  # kept alive
    await client.close()


async def test_the_backend_answers_over_one_kept_alive_connection(server):
    state, url = server
    backend = backend_for(url)
    for _ in range(3):
        deltas = [d async for d in backend.generate(completion())]
        assert "".join(d.text for d in deltas) == "Hello there, friend!"
        assert deltas[-1].finish_reason == "length" and deltas[-1].num_output_tokens == 5
    assert state.connections == 1
    await backend.shutdown()


async def test_a_connection_the_server_closed_while_idle_is_not_used_again(server):
    state, url = server
    client = client_for(url)
    await read_all(client)
    for writer in state.writers:  # the server's keep-alive timeout ran out
        writer.close()
    await asyncio.sleep(0.05)
    assert len(await read_all(client)) == 7
    assert state.connections == 2
    await client.close()


async def test_a_request_the_server_dropped_unanswered_is_sent_again_on_a_new_connection(server):
    state, url = server
    state.once = True  # it closes each connection when a second request arrives on it
    backend = backend_for(url)
    for _ in range(3):
        deltas = [d async for d in backend.generate(completion(2))]
        assert "".join(d.text for d in deltas) == "Hello there"
    assert len(state.bodies) == 3 and state.connections == 3
    await backend.shutdown()


async def test_a_server_that_dies_mid_stream_ends_the_answer_with_a_stream_error(server):
    state, url = server
    state.mode = "die"
    backend = backend_for(url)
    got = []
    with pytest.raises(BackendStreamError) as broken:
        async for delta in backend.generate(completion()):
            got.append(delta.text)
    assert got == ["Hello", " there"] and "broke off" in broken.value.message
    assert backend.in_flight == 0
    with pytest.raises(UpstreamError):  # the bare client says so too
        await read_all(client_for(url))
    await backend.shutdown()


async def test_an_error_answer_with_a_body_is_mapped_and_the_next_request_is_served(server):
    state, url = server
    state.mode = "error"
    backend = backend_for(url)
    with pytest.raises(InvalidRequestError) as bad:
        [d async for d in backend.generate(completion())]
    assert bad.value.param == "top_p" and "bad top_p" in bad.value.message
    state.mode = "chunked"
    assert len([d async for d in backend.generate(completion(1))]) == 2
    await backend.shutdown()


async def test_a_server_that_hangs_up_before_answering_is_unavailable_after_one_retry(server):
    state, url = server
    state.mode = "hangup"
    backend = backend_for(url)
    with pytest.raises(BackendUnavailableError) as down:
        [d async for d in backend.generate(completion())]
    assert down.value.status_code == 503  # nothing was generated: a router tries another
    assert state.connections == 2 and len(state.bodies) == 2  # sent once more, not again
    await backend.shutdown()
