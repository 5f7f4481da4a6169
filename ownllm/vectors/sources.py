"""Answers with sources: retrieved chunks as numbered sources in the prompt, and the
citations an answer carries.

The sources go into the last user message, before the question, and never into the
system message: a retrieved document is untrusted text, as a user's is, and the input
guard checks user messages for attacks (it trusts the developer's system prompt). So an
instruction planted in a document ("ignore all previous instructions...") is flagged, or
blocked, by the tenant's policy as if the user had typed it. The answer names its sources by number, `[1]`, `[2]`;
the citations list which number is which file.
"""

from __future__ import annotations

from typing import Any

from ownllm.vectors.search import Hit

INSTRUCTIONS = (
    "Answer using the numbered sources below. Cite each source you use by its number in "
    "square brackets, like [1]. If the sources do not contain the answer, say so."
)


QUESTION = "\n\nQuestion: "


def sources_text(hits: list[Hit]) -> str:
    parts = [INSTRUCTIONS]
    for n, hit in enumerate(hits, 1):
        parts.append(f"[{n}] {hit.filename}\n{hit.text}")
    return "\n\n".join(parts)


def with_sources(messages: list[dict[str, Any]], hits: list[Hit]) -> list[dict[str, Any]]:
    """The messages with the sources before the last user message's text (a new list)."""
    out = list(messages)
    last = max((i for i, m in enumerate(out) if m["role"] == "user"), default=None)
    if not hits or last is None:
        return out
    question = out[last].get("content") or ""
    out[last] = dict(out[last], content=f"{sources_text(hits)}{QUESTION}{question}")
    return out


def without_sources(content: str) -> str:
    """A user message's text without the sources `with_sources` put before it."""
    if content.startswith(INSTRUCTIONS) and QUESTION in content:
        return content.rpartition(QUESTION)[2]
    return content


def citations(hits: list[Hit]) -> list[dict[str, Any]]:
    """The ownllm `citations` of a chat answer: source n is the answer's [n]."""
    return [
        {
            "type": "file_citation",
            "index": n,
            "file_id": hit.file_id,
            "filename": hit.filename,
            "vector_store_id": hit.store_id,
            "score": hit.score,
            "text": hit.text,
        }
        for n, hit in enumerate(hits, 1)
    ]


def query_of(messages: list[dict[str, Any]]) -> str:
    """What to search for: the last user message."""
    for m in reversed(messages):
        if m["role"] == "user" and (m.get("content") or "").strip():
            return m["content"]
    return ""
