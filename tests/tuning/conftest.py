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


def pair(user: str, preferred: str, non_preferred: str, system: str | None = None) -> dict:
    """One line of OpenAI's preference (DPO) format."""
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "input": {"messages": [*messages, {"role": "user", "content": user}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


OTHER = "Goodbye moon."  # the answer the DPO tests' pairs reject
PAIRS = [pair(f"question {i}", REPLY, OTHER) for i in range(12)]
