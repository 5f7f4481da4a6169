"""A stored file's text, for chunking: plain text and Markdown as they are, PDF and HTML
through well-kept extraction libraries.

- PDF: pypdf (pure Python, BSD, the maintained successor of PyPDF2): the text of each
  page, pages separated by a blank line. A scanned PDF (images, no text layer) has none,
  and fails as `invalid_file` (no OCR here).
- HTML: inscriptis (Apache-2.0, on lxml): renders the page as a browser lays out text, so
  paragraphs, lists and table cells stay apart, and scripts and styles are dropped.
- Anything else that decodes as UTF-8 text (Markdown, code, CSV, JSON, logs) is read as it
  is; Markdown is kept as Markdown, which MiniLM reads well enough.

The kind is taken from the content first (`%PDF-`, an HTML start), then the file name.
Errors are `ExtractError` with OpenAI's `last_error` codes: `unsupported_file` for bytes
that are not text, `invalid_file` for a document with no text or one its library cannot
read.
"""

from __future__ import annotations

import io
from pathlib import Path

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml")


class ExtractError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def kind_of(data: bytes, filename: str) -> str:
    """'pdf', 'html' or 'text' (decided by the bytes, then the name)."""
    head = data[:1024].lstrip().lower()
    if data.startswith(b"%PDF-"):
        return "pdf"
    suffix = Path(filename).suffix.lower()
    if suffix in HTML_SUFFIXES or (head.startswith(_HTML_STARTS) and b"<html" in head):
        return "html"
    if suffix == ".pdf":
        return "pdf"  # a damaged PDF: its library says what is wrong
    return "text"


def extract_text(data: bytes, filename: str) -> str:
    """The text of a file's bytes; raises ExtractError."""
    kind = kind_of(data, filename)
    if kind == "pdf":
        text = _pdf(data)
    elif kind == "html":
        text = _html(_decode(data, filename))
    else:
        text = _decode(data, filename)
    if not text.strip():
        raise ExtractError("invalid_file", f"The file {filename!r} contains no text.")
    return text


def _decode(data: bytes, filename: str) -> str:
    if b"\x00" in data[:8192]:
        raise ExtractError(
            "unsupported_file",
            f"The file {filename!r} is not text, PDF or HTML (it holds binary data).",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ExtractError(
            "unsupported_file",
            f"The file {filename!r} is not UTF-8 text (invalid byte at offset {e.start}).",
        ) from None


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractError("invalid_file", "The PDF is encrypted; upload it unencrypted.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise ExtractError("invalid_file", f"The PDF cannot be read: {e}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def _html(markup: str) -> str:
    from inscriptis import get_text

    return get_text(markup)
