"""The OpenAI cursor-page list object: `{"object": "list", "data", "first_id", "last_id", "has_more"}`."""

from __future__ import annotations


def cursor_page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
