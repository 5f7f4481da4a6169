"""Helpers for tuning tests: chat JSONL records and files (the fixtures `learnable_model_dir`
and `reply_file` are in tests/conftest.py, for the API and CLI tests too)."""

from __future__ import annotations

import json
from pathlib import Path


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [
            *messages,
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


REPLY = "Hello world!"  # three tokens of the tiny tokenizer: learnable in seconds
