"""Answers with sources: retrieved chunks as numbered sources in the prompt, and the
citations an answer carries.

The sources go into the system message (appended to the first one, or as one of their
own before the conversation), so the model reads them as context, not as the user's
words; and so they pass the input guard like any message: an instruction planted in a
document ("ignore all previous instructions...") is flagged, or blocked, by the tenant's
policy as if a user had typed it. The answer names its sources by number, `[1]`, `[2]`;
the citations list which number is which file.
"""

from __future__ import annotations

from typing import Any

from ownllm.vectors.search import Hit

INSTRUCTIONS = (
    "Answer using the numbered sources below. Cite each source you use by its number in "
    "square brackets, like [1]. If the sources do not contain the answer, say so."
)


def sources_text(hits: list[Hit]) -> str:
    parts = [INSTRUCTIONS]
    for n, hit in enumerate(hits, 1):
        parts.append(f"[{n}] {hit.filename}\n{hit.text}")
    return "\n\n".join(parts)


def with_sources(messages: list[dict[str, Any]], hits: list[Hit]) -> list[dict[str, Any]]:
    """The messages with the sources in the system message (a new list)."""
    if not hits:
        return list(messages)
    text = sources_text(hits)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0], content=f"{messages[0]['content']}\n\n{text}")
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


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
