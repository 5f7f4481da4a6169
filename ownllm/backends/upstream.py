"""The streamed completion calls to an upstream server, over aiohttp.

One `UpstreamClient` per backend keeps a pool of keep-alive connections to its server and
sends each generation as one JSON POST whose answer is read as it streams. aiohttp parses
HTTP/1.1 in C (llhttp): per streamed token it costs about half of httpx over h11, which
was most of the gateway's CPU per token and part of its added time to first token
(bench/RESULTS.md). Health checks, metric scrapes and adapter loading stay on httpx: they
are not on a request's path.

Errors come out as `UpstreamError` (nothing of the answer arrived yet, or a connection that
broke while it streamed) with the cause's words, so the backend maps them once. A pooled
connection the server closed while it sat idle is sent again once on a new connection, as
long as no byte of the answer had arrived (a POST is not retried past that).

Left out: HTTP/2, proxies from the environment, and cookies (an upstream has none to keep).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

CONNECT_TIMEOUT_S = 10.0  # a free connection from the pool, or a new one made
DRAIN_TIMEOUT_S = 1.0  # the end of a finished answer (its last chunk), to keep the connection


class UpstreamError(Exception):
    """The server could not be reached, or the connection broke off (the words say how)."""


class UpstreamClient:
    """Streamed JSON POSTs to one server (`base_url`, `http://host:port`)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.base_url = base_url
        self._headers = {"Content-Type": "application/json", **headers}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT_S, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        # made on first use, in the event loop that serves the requests (aiohttp binds a
        # session to its loop: one used from another loop is left to its own)
        session = self._session
        if session is None or session.closed or session._loop is not asyncio.get_running_loop():
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                self.base_url,
                connector=connector,
                headers=self._headers,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[UpstreamResponse]:
        """POST `body` to `path`; the answer's head has arrived when this yields."""
        data = json.dumps(body).encode()
        session = self._open_session()
        response = None
        for attempt in range(2):
            try:
                response = await session.post(path, data=data)
                break
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
                raise UpstreamError(_describe(e)) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if attempt:  # a stale pooled connection is retried once, on a new one
                    raise UpstreamError(_describe(e)) from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise UpstreamError(_describe(e)) from None
        assert response is not None
        try:
            yield UpstreamResponse(response)
        finally:
            response.release()  # back to the pool when it was read to its end, else closed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class UpstreamResponse:
    """One streamed answer: its status and headers, its body as bytes or as lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (dechunked, decompressed)."""
        try:
            async for part in self._response.content.iter_any():
                yield part
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise UpstreamError(_describe(e)) from None

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines, without their `\\n` (server-sent events; json.loads takes bytes)."""
        rest = b""
        async for part in self.chunks():
            lines = (rest + part).split(b"\n") if rest else part.split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line
        if rest:
            yield rest

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes of the body (an error answer's message)."""
        raw = b""
        async for part in self.chunks():
            raw += part
            if len(raw) >= limit:
                break
        return raw

    async def finish(self) -> None:
        """Read the end of an answer whose last event has arrived (a chunked body's last,
        empty chunk), so its connection goes back to the pool rather than being closed."""
        content = self._response.content
        if not content.at_eof():
            try:
                await asyncio.wait_for(content.read(), DRAIN_TIMEOUT_S)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.close()

    def close(self) -> None:
        """Close the connection under the answer: a reader waiting on it gets `UpstreamError`,
        and the server sees its client leave."""
        self._response.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError) and not str(error):
        return "timed out waiting for the server"
    return str(error) or type(error).__name__
