"""The OpenAI cursor-page list object: `{"object": "list", "data", "first_id", "last_id", "has_more"}`.

An empty page has `first_id` and `last_id` of `""`, not null: OpenAI's spec makes both
required strings (clients generated from it refuse null), and the official clients
take the next cursor from the last item's id and `has_more`, never from these.
"""

from __future__ import annotations


def cursor_page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "",
        "has_more": has_more,
    }
