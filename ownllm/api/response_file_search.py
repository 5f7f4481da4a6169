"""The Responses API's `file_search` tool: search first, then answer with citations.

`{"type": "file_search", "vector_store_ids": [...], "max_num_results": N, "filters",
"ranking_options"}` in `tools` makes the run a `FileSearchResponseRun`: before the prompt
is tokenised, the last user message is searched in the stores (the tenant's own, else
404) and the hits go before it as numbered sources (`ownllm.vectors.sources`), so they
count as input tokens and pass the input guard. The response's `output` is then

    file_search_call  {id, status: completed, queries: [the query], results: null, or the
                       hits with `include: ["file_search_call.results"]`}
    message           whose output_text carries `file_citation` annotations
                       {file_id, filename, index}

Each `[n]` the answer writes becomes an annotation for source n at that character index;
an answer that cites no source by number gets one annotation per source at its end (the
text was answered from them). Streamed, the search's events
(`response.file_search_call.in_progress`, `.searching`, `.completed`) and its item come
first, at output_index 0, and the message at 1.
"""

from __future__ import annotations

import re
from typing import Any

from ownllm.api.response_run import ResponseRun
from ownllm.api.retrieval import retrieve_sources
from ownllm.ids import new_id
from ownllm.vectors.search import Hit

CITE = re.compile(r"\[(\d{1,2})\]")


def file_citations(text: str, hits: list[Hit]) -> list[dict[str, Any]]:
    """OpenAI `file_citation` annotations of an answer over numbered `hits`."""
    out = []
    for m in CITE.finditer(text):
        n = int(m.group(1))
        if 1 <= n <= len(hits):
            hit = hits[n - 1]
            out.append(
                {"type": "file_citation", "file_id": hit.file_id, "filename": hit.filename,
                 "index": m.start()}
            )  # fmt: skip
    if not out:
        out = [
            {"type": "file_citation", "file_id": h.file_id, "filename": h.filename,
             "index": len(text)}
            for h in hits
        ]  # fmt: skip
    return out


class FileSearchResponseRun(ResponseRun):
    """A Responses call with the file_search tool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.search_id = new_id("fs", sep="_")
        self.query = ""
        self.hits: list[Hit] | None = None
        self.include_results = "file_search_call.results" in (self.rc.body.include or ())
        self._is_searched = False  # the search item is in `output`

    async def prepare(self) -> None:
        if self.hits is None:  # once: a guard redaction prepares again, over the sources
            self.query, self.hits = await retrieve_sources(
                self.state, self.call, self.rc.file_search
            )
        await super().prepare()

    def search_item(self, status: str) -> dict[str, Any]:
        results = None
        if self.include_results and status == "completed":
            results = [
                {"file_id": h.file_id, "filename": h.filename, "score": h.score,
                 "text": h.text, "attributes": h.attributes}
                for h in self.hits or ()
            ]  # fmt: skip
        queries = [self.query] if self.query else []
        return {"id": self.search_id, "type": "file_search_call", "status": status,
                "queries": queries, "results": results}  # fmt: skip

    def feed(self, text: str, finish_reason: str | None) -> bytes:
        """The search item first (output_index 0); at the end, the citations on the
        message items before they are closed."""
        out = b""
        if not self._is_searched:
            self._is_searched = True
            out += self._search_events()
        if finish_reason is None:
            return out + super().feed(text, None)
        out += super().feed(text, None) if text else b""
        for item in self.output.items:
            if item["type"] == "message":
                part = item["content"][0]
                part["annotations"] = file_citations(part["text"], self.hits or [])
        return out + super().feed("", finish_reason)

    def _search_events(self) -> bytes:
        item = self.search_item("completed")
        self.output.items.append(item)
        w = self.writer
        if w is None:
            return b""
        where = {"output_index": 0, "item_id": self.search_id}
        return (
            w.event("response.output_item.added", output_index=0,
                    item=self.search_item("in_progress"))
            + w.event("response.file_search_call.in_progress", **where)
            + w.event("response.file_search_call.searching", **where)
            + w.event("response.file_search_call.completed", **where)
            + w.event("response.output_item.done", output_index=0, item=item)
        )  # fmt: skip
