"""The gate in front of the app: the key and the body's size are checked before the body is read.

FastAPI reads a route's whole body (JSON, or a multipart form spooled to a temporary file)
before its dependencies run, so a key used to be checked only once the upload had arrived.
`BodyGate` is pure ASGI (it never buffers a body) and decides on the headers alone:

1. A route whose dependencies resolve a principal (`get_principal`, however deep) is
   authenticated here, by the same `authenticate` and key cache: a missing or wrong key is
   answered 401 and the body is never read. The principal is left in the scope, where
   `get_principal` takes it (one resolve per request). Other routes (/health, /ready,
   /metrics, the dashboard's files, /docs, unknown paths) pass as before.
2. The body is capped by what the route takes. An upload route names its limit with
   `@upload_limit` (files: `tuning.max_file_bytes`; adapters: their archive cap); every
   other route takes JSON, capped at `server.max_json_body_bytes`. A Content-Length above
   the cap is answered 413 at once; a chunked body is counted as it arrives and answered 413
   when it passes the cap, the app then seeing the client disconnect (an upload deletes what
   it wrote).
3. A body that sends nothing for `server.body_timeout_s` is answered 408, as nginx's
   `client_body_timeout`.

An answer sent before the body was read in full says `Connection: close`, so the server
neither waits for nor reads a body it refused. Left out: a total body deadline or minimum
rate (a large upload over a slow link is legitimate, and only a key holder gets that far)
and header timeouts (the HTTP server's).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import fastapi.routing
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ownllm.api.errors import error_response, ownllm_error_response
from ownllm.config import Config
from ownllm.errors import OwnLLMError, PayloadTooLargeError
from ownllm.gateway.auth import (
    PRINCIPAL_SCOPE_KEY,
    Authenticator,
    authenticate,
    get_principal,
    token_from_headers,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

MULTIPART_SLACK = 64 * 1024  # part headers and the small form fields beside the file
_CACHE_MAX = 4096  # (method, path) -> rule; cleared when full (paths carry ids)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class BodyLimit:
    """The largest body a route takes, and what its 413 says."""

    max_bytes: int
    message: str
    code: str = "request_too_large"
    param: str | None = None

    def error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(self.message, param=self.param, code=self.code)


def json_limit(config: Config) -> BodyLimit:
    cap = config.server.max_json_body_bytes
    return BodyLimit(
        cap,
        f"The request body is larger than the {cap:,}-byte limit "
        "(setting server.max_json_body_bytes).",
    )


def upload_limit(limit: Callable[[Config], BodyLimit]) -> Callable[[F], F]:
    """Mark an upload route: its body may grow to `limit(config)` instead of the JSON limit.

    The route must stream its body (`request.stream()`), not declare File/Form parameters,
    or FastAPI reads the whole form before the route's scope is checked."""

    def mark(endpoint: F) -> F:
        endpoint.body_limit = limit  # type: ignore[attr-defined]
        return endpoint

    return mark


@dataclass(frozen=True)
class _Rule:
    needs_key: bool
    limit: BodyLimit


def _calls(dependant: Any) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


class BodyGate:
    """ASGI middleware: authenticate, then cap and time the body, before the app reads it."""

    def __init__(self, app: ASGIApp, *, api: FastAPI, config: Config, auth: Authenticator) -> None:
        self.app, self.api, self.config, self.auth = app, api, config, auth
        self.timeout_s = config.server.body_timeout_s
        self._json = json_limit(config)
        self._routes: list[tuple[Any, _Rule]] | None = None
        self._rules: dict[tuple[str, str], _Rule] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self._rule(scope)
        headers = Headers(scope=scope)
        if rule.needs_key and get_principal not in self.api.dependency_overrides:
            try:
                token = token_from_headers(headers)
                principal = await authenticate(self.auth, token)
            except OwnLLMError as exc:
                await _early(ownllm_error_response(exc), headers, scope, receive, send)
                return
            scope[PRINCIPAL_SCOPE_KEY] = principal
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > rule.limit.max_bytes:
            await _early(ownllm_error_response(rule.limit.error()), headers, scope, receive, send)
            return
        await self._call_capped(scope, receive, send, rule.limit)

    async def _call_capped(self, scope: Scope, receive: Receive, send: Send, limit: BodyLimit):
        received = 0
        body_done = started = answered = False

        async def answer(response: Response) -> Message:
            """Send our response instead of the app's; the app hears the client is gone."""
            nonlocal answered
            if not started:
                response.headers["connection"] = "close"
                await response(scope, receive, send)
            answered = True
            return {"type": "http.disconnect"}

        async def capped_receive() -> Message:
            nonlocal received, body_done
            if answered:
                return {"type": "http.disconnect"}
            if body_done or not self.timeout_s:
                message = await receive()
            else:
                try:
                    message = await _receive_within(receive, self.timeout_s)
                except TimeoutError:
                    return await answer(_timeout_response(self.timeout_s))
            if message["type"] == "http.request" and not body_done:
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit.max_bytes:
                    return await answer(ownllm_error_response(limit.error()))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the client has our answer; the app's comes too late
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except Exception:
            if not answered:
                raise
            # the app gave up on the disconnect it was told of; the client has its answer

    def _rule(self, scope: Scope) -> _Rule:
        key = (scope["method"], scope["path"])
        rule = self._rules.get(key)
        if rule is None:
            rule = self._match(scope)
            if len(self._rules) >= _CACHE_MAX:
                self._rules.clear()
            self._rules[key] = rule
        return rule

    def _match(self, scope: Scope) -> _Rule:
        if self._routes is None:  # built on the first request: every route is added by then
            self._routes = [(route, self._rule_of(route)) for route in _flat(self.api.routes)]
        for route, rule in self._routes:
            if route.matches(scope)[0] == Match.FULL:
                return rule
        return _Rule(False, self._json)  # 404 or 405: the router answers without the body

    def _rule_of(self, route: Any) -> _Rule:
        dependant = getattr(route, "dependant", None)
        needs_key = dependant is not None and get_principal in _calls(dependant)
        limit_for = getattr(getattr(route, "endpoint", None), "body_limit", None)
        return _Rule(needs_key, limit_for(self.config) if limit_for else self._json)


def _flat(routes: list[Any]) -> list[Any]:
    """Every route with its full path (FastAPI >= 0.16x keeps included routers nested)."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(walk(routes)) if walk else list(routes)


async def _receive_within(receive: Receive, seconds: float) -> Message:
    if sys.version_info >= (3, 11):  # a third of anyio's cost, paid on every body
        async with asyncio.timeout(seconds):
            return await receive()
    with anyio.fail_after(seconds):
        return await receive()


def _timeout_response(timeout_s: float) -> Response:
    return error_response(
        408,
        f"The request body sent nothing for {timeout_s:g} s (setting server.body_timeout_s).",
        "invalid_request_error",
        None,
        "request_timeout",
    )


async def _early(
    response: Response, headers: Headers, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer before reading the body; a request that has one is then closed, not drained."""
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        response.headers["connection"] = "close"
    await response(scope, receive, send)
