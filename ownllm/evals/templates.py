"""`{{item.field}}` and `{{sample.output_text}}` in eval templates, as OpenAI's Evals API
writes them.

A reference names a path into the context (`item.question`, `item.meta.lang`,
`sample.output_text`, `sample.output_json`); a string value goes in as it is, any other as
its JSON; a path that is not there renders as the empty string. Nothing else is
evaluated (no expressions, no filters).
"""

from __future__ import annotations

import json
import re
from typing import Any

_REF = re.compile(r"\{\{\s*((?:item|sample)(?:\.[A-Za-z0-9_\-]+)+)\s*\}\}")


def lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def render(template: str, context: dict[str, Any]) -> str:
    def one(match: re.Match) -> str:
        value = lookup(context, match.group(1))
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _REF.sub(one, template)


def render_messages(
    template: list[dict[str, Any]], context: dict[str, Any]
) -> list[dict[str, str]]:
    """Chat messages from a template of {role, content} (`developer` is a system message)."""
    messages = []
    for m in template:
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": render(m["content"], context)})
    return messages
