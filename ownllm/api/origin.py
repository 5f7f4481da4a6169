"""Browser guards in front of the app: the Host check and the cross-origin check.

Pure ASGI, on the headers alone (the body is never read):

1. DNS rebinding. A server listening on loopback (`server.host` 127.0.0.1, ::1 or
   localhost, and the request arrived on a loopback socket) answers only requests for a
   loopback host — `localhost`, `127.0.0.1` (any of 127/8), `[::1]`, with any port — or for
   a name in `server.allowed_hosts`. A page on evil.example whose DNS name is re-pointed
   at 127.0.0.1 is same-origin with this server in the browser, but its requests say
   `Host: evil.example`, and they are refused. This holds whether or not keys exist, so it
   does not change when the first key is created, needs no database look-up before
   authentication, and covers the routes that take no key (/metrics, the dashboard's
   files). A server on any other address needs keys anyway, and its names are the
   operator's; it is not checked.
2. Cross-site requests. A POST, PUT, PATCH or DELETE from a page of another origin is
   refused unless it is one a browser must ask the server about first (a CORS preflight,
   which this server never grants): one that carries a key (`Authorization` or `api-key`)
   and a body that is not a form's (`multipart/form-data`,
   `application/x-www-form-urlencoded`, `text/plain`, or none). So a cross-site `<form>`
   cannot post a file to /v1/files in open mode. "Another origin" is an `Origin` header
   whose host[:port] is not the request's `Host` nor in `server.allowed_hosts` (scheme
   left out: a TLS proxy in front makes it differ), or, with no `Origin`,
   `Sec-Fetch-Site: cross-site` or `same-site`. The openai clients and curl send neither
   header; the dashboard is same-origin.

Both answer 403 in OpenAI's error shape, as Jupyter and Ollama refuse such requests: the
openai client raises `PermissionDeniedError` with the message (421 Misdirected Request
would fit the Host case too, but reaches clients as an unexplained status). Left out:
CORS (no cross-origin browser use is granted), rules per route.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ownllm.api.errors import error_response
from ownllm.config import ServerConfig
from ownllm.gateway.principal import is_loopback

log = logging.getLogger("ownllm.api")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Content types a page may send cross-origin without a preflight ("" : no body).
FORM_TYPES = frozenset(
    {"", "multipart/form-data", "application/x-www-form-urlencoded", "text/plain"}
)


def host_name(value: str) -> str:
    """The host of a Host header or allowed_hosts entry: no port, no brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        value = value.partition(":")[0]
    return value.rstrip(".")


class OriginCheck:
    """ASGI middleware: refuse DNS-rebinding and cross-site requests before the app runs."""

    def __init__(self, app: ASGIApp, *, server: ServerConfig) -> None:
        self.app = app
        names = {host_name(n) for n in server.allowed_hosts.split(",") if n.strip()}
        self.is_any_host = "*" in names
        self.allowed_hosts = frozenset(names - {"*"})
        self.is_loopback_server = is_loopback(server.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        """The 403 for this request, or None when it may pass."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is not None and self._checks_host(scope) and not self._is_allowed_host(host):
            log.warning("refused a request for Host %r (not a loopback name)", host)
            return _refuse(
                headers,
                f"Host {host!r} is not allowed: this server listens on loopback and answers "
                "only localhost, 127.0.0.1 and [::1] (a guard against DNS rebinding). To reach "
                "it by another name, add the name to server.allowed_hosts "
                "(OWNLLM_SERVER_ALLOWED_HOSTS).",
                "host_not_allowed",
            )
        if scope["method"] in STATE_CHANGING and not _must_preflight(headers):
            origin = self._foreign_origin(headers)
            if origin is not None:
                method, path = scope["method"], scope["path"]
                log.warning("refused a cross-site %s %s from %s", method, path, origin)
                return _refuse(
                    headers,
                    f"Cross-site request refused: {origin} may not send {method} {path} "
                    "here. From another origin only requests with an API key in the "
                    "Authorization header and a JSON body pass (a guard against cross-site "
                    "request forgery); add the page's host to server.allowed_hosts to let it "
                    "post forms.",
                    "cross_site_request",
                )
        return None

    def _checks_host(self, scope: Scope) -> bool:
        if self.is_any_host or not self.is_loopback_server:
            return False
        server = scope.get("server")  # the socket's address; an in-process client has none
        return bool(server) and is_loopback(str(server[0]))

    def _is_allowed_host(self, host: str) -> bool:
        name = host_name(host)
        return is_loopback(name) or name in self.allowed_hosts

    def _foreign_origin(self, headers: Headers) -> str | None:
        """How the request names the other origin it comes from, or None when same-origin."""
        origin = headers.get("origin")
        if origin is None:
            site = headers.get("sec-fetch-site", "")
            return f"a {site} page" if site in ("cross-site", "same-site") else None
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        if netloc and netloc == headers.get("host", "").lower():
            return None
        if netloc and host_name(netloc) in self.allowed_hosts:
            return None
        return f"a page of origin {origin!r}"


def _must_preflight(headers: Headers) -> bool:
    """True for a request a browser sends cross-origin only after a CORS preflight."""
    has_key = bool(headers.get("authorization") or headers.get("api-key"))
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    return has_key and media_type not in FORM_TYPES


def _refuse(headers: Headers, message: str, code: str) -> Response:
    response = error_response(403, message, "permission_error", code=code)
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        response.headers["connection"] = "close"  # the body is left unread
    return response
