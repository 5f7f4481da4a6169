"""Multipart uploads parsed as they arrive (python-multipart's push parser), never spooled.

`read_form` reads the body once: the `file` part goes chunk by chunk into a sink the route
opens for it (a file beside the upload's final place, which can refuse a chunk past a
limit or quota), every other part is a small text field. Whatever stops the upload — a bad
part, a limit, the client leaving — the sink is discarded before the error goes on, so
nothing half-written stays. The body as a whole is capped before the route runs, by
`ownllm.api.bodies` (`@upload_limit`). Used by `POST /v1/files` and `POST /v1/adapters`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from ownllm.errors import InvalidRequestError

MAX_FIELD_BYTES = 4096


class Sink(Protocol):
    def write(self, chunk: bytes) -> None: ...

    def discard(self) -> None: ...


@dataclass
class Form:
    """An upload read in full: its text fields, and the sink holding the file part."""

    fields: dict[str, str] = field(default_factory=dict)
    file: Sink | None = None
    filename: str = ""


def multipart_boundary(request: Request, parts: str) -> bytes:
    """The boundary of a multipart/form-data body, else 400 naming the `parts` expected."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequestError(
            f"Upload the file as multipart/form-data with {parts} fields.", param="file"
        )
    return options[b"boundary"]


async def read_form(request: Request, boundary: bytes, open_file: Callable[[str], Sink]) -> Form:
    """Stream the body through the parser; `open_file(filename)` is called for the `file`
    part (once: a second one is refused) and may raise to refuse it."""
    parts = _Parts(open_file)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException:
        if parts.form.file is not None:
            parts.form.file.discard()
        raise
    parts.form.fields = {k: v.decode("utf-8", "replace") for k, v in parts.values.items()}
    return parts.form


class _Parts:
    """Push-parser callbacks: the `file` part streams to its sink, other parts are small."""

    def __init__(self, open_file: Callable[[str], Sink]) -> None:
        self.open_file = open_file
        self.form = Form()
        self._name: str | None = None
        self.values: dict[str, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
        }

    def _begin(self) -> None:
        self._headers, self._name = {}, None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.form.file is not None:
                raise InvalidRequestError("Only one 'file' part is allowed.", param="file")
            self.form.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.form.file = self.open_file(self.form.filename)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file" and self.form.file is not None:
            self.form.file.write(data[start:end])
        elif self._name:
            value = self.values.get(self._name, b"") + data[start:end]
            if len(value) > MAX_FIELD_BYTES:
                raise InvalidRequestError(f"'{self._name}' is too long.", param=self._name)
            self.values[self._name] = value
