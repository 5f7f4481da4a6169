"""The `output` items of one response, built as the answer streams, with their events.

An answer is a sequence of pieces: text, a function call opened (its call id and name),
fragments of that call's arguments. `ResponseOutput` turns them into output items — a
`message` with one `output_text` part for each run of text, a `function_call` for each
call — and writes the events OpenAI sends for each (`output_item.added`,
`content_part.added`, `output_text.delta` or `function_call_arguments.delta`, then the
`.done` events when the item ends). Without an `EventWriter` it only builds the items
(a response that is not streamed), so both shapes come from the same code.
"""

from __future__ import annotations

from typing import Any

from ownllm.api.response_objects import (
    EventWriter,
    function_call_item,
    message_item,
    output_text_part,
)
from ownllm.ids import new_id


class ResponseOutput:
    def __init__(self, writer: EventWriter | None = None) -> None:
        self.writer = writer
        self.items: list[dict[str, Any]] = []  # finished items, and the open one last
        self.is_open = False

    @property
    def text(self) -> str:
        """The text of every message item, in order."""
        return "".join(
            item["content"][0]["text"] for item in self.items if item["type"] == "message"
        )

    def _event(self, type_: str, **fields: Any) -> bytes:
        return self.writer.event(type_, **fields) if self.writer is not None else b""

    def content(self, text: str) -> bytes:
        out = b""
        if not self.is_open or self.items[-1]["type"] != "message":
            out += self.close("completed") + self._open_message()
        item, index = self.items[-1], len(self.items) - 1
        item["content"][0]["text"] += text
        return out + self._event(
            "response.output_text.delta", item_id=item["id"], output_index=index,
            content_index=0, delta=text, logprobs=[],
        )  # fmt: skip

    def open_call(self, call_id: str, name: str) -> bytes:
        out = self.close("completed")
        item = function_call_item(new_id("fc"), call_id, name, "", "in_progress")
        self.items.append(item)
        self.is_open = True
        added = {**item, "arguments": ""}
        return out + self._event(
            "response.output_item.added", output_index=len(self.items) - 1, item=added
        )

    def arguments(self, text: str) -> bytes:
        item, index = self.items[-1], len(self.items) - 1
        item["arguments"] += text
        return self._event(
            "response.function_call_arguments.delta", item_id=item["id"], output_index=index,
            delta=text,
        )  # fmt: skip

    def close(self, status: str) -> bytes:
        """End the open item (if any) with `status` and write its `.done` events."""
        if not self.is_open:
            return b""
        self.is_open = False
        item, index = self.items[-1], len(self.items) - 1
        item["status"] = status
        if item["type"] == "function_call":
            return self._event(
                "response.function_call_arguments.done", item_id=item["id"],
                output_index=index, name=item["name"], arguments=item["arguments"],
            ) + self._event("response.output_item.done", output_index=index, item=item)  # fmt: skip
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        text = item["content"][0]["text"]
        return (
            self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event("response.content_part.done", **where, part=output_text_part(text))
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def finish(self, status: str) -> bytes:
        """End the answer: the open item closed; an answer with no item gets an empty
        message, so `output` is never empty."""
        out = b"" if self.items else self._open_message()
        return out + self.close(status)

    def snapshot(self, status: str) -> list[dict[str, Any]]:
        """The items so far, the open one marked `status` (a response that failed)."""
        items = [dict(item) for item in self.items]
        if self.is_open and items:
            items[-1]["status"] = status
        return items

    def _open_message(self) -> bytes:
        item = message_item(new_id("msg"), "", "in_progress")
        self.items.append(item)
        self.is_open = True
        index = len(self.items) - 1
        added = message_item(item["id"], None, "in_progress")  # no part yet, as OpenAI
        return self._event("response.output_item.added", output_index=index, item=added) + (
            self._event(
                "response.content_part.added", item_id=item["id"], output_index=index,
                content_index=0, part=output_text_part(""),
            )
        )  # fmt: skip
