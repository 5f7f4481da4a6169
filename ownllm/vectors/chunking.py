"""How a file is cut into chunks: the chunking strategy, and token windows over a text.

OpenAI's strategies: `static` with `max_chunk_size_tokens` (100..4096) and
`chunk_overlap_tokens` (at most half of it), or `auto`. Tokens are the embedding model's
own (OpenAI counts in its tokenizer; ownllm has MiniLM's). `auto` is 256 tokens with 64
of overlap rather than OpenAI's 800/400: all-MiniLM-L6-v2 was trained on passages of up to
256 word pieces (sentence-transformers truncates there by default), and five sources of
256 tokens still fit a small model's context. A chunk longer than the embedding model
reads (512 positions for MiniLM) is embedded from its first 512 tokens; its whole text is
kept and returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ownllm.errors import InvalidRequestError

MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 100, 4096


@dataclass(frozen=True)
class Chunking:
    max_chunk_size_tokens: int = 256
    chunk_overlap_tokens: int = 64

    def to_dict(self) -> dict[str, int]:
        return {
            "max_chunk_size_tokens": self.max_chunk_size_tokens,
            "chunk_overlap_tokens": self.chunk_overlap_tokens,
        }

    def wire(self) -> dict[str, Any]:
        """As the vector store file object shows it (auto shows as the static it chose)."""
        return {"type": "static", "static": self.to_dict()}


AUTO = Chunking()


def parse_chunking(value: Any, param: str = "chunking_strategy") -> Chunking:
    """The strategy of a request (None: auto); a 400 naming the field for a bad one."""
    if value is None:
        return AUTO
    if not isinstance(value, dict) or "type" not in value:
        raise InvalidRequestError(
            f"Invalid '{param}': expected an object with type 'auto' or 'static'.", param=param
        )
    kind = value["type"]
    if kind == "auto":
        return AUTO
    if kind != "static":
        raise InvalidRequestError(
            f"Invalid '{param}.type': {kind!r}; expected 'auto' or 'static'.", param=f"{param}.type"
        )
    static = value.get("static")
    if not isinstance(static, dict):
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.static'.", param=f"{param}.static"
        )
    size = _int(static, "max_chunk_size_tokens", f"{param}.static")
    overlap = _int(static, "chunk_overlap_tokens", f"{param}.static")
    if not MIN_CHUNK_TOKENS <= size <= MAX_CHUNK_TOKENS:
        raise InvalidRequestError(
            f"Invalid '{param}.static.max_chunk_size_tokens': {size}; expected a value from "
            f"{MIN_CHUNK_TOKENS} to {MAX_CHUNK_TOKENS}.",
            param=f"{param}.static.max_chunk_size_tokens",
        )
    if not 0 <= overlap <= size // 2:
        raise InvalidRequestError(
            f"Invalid '{param}.static.chunk_overlap_tokens': {overlap}; it must be at least 0 "
            f"and must not exceed half of max_chunk_size_tokens ({size // 2}).",
            param=f"{param}.static.chunk_overlap_tokens",
        )
    return Chunking(size, overlap)


def _int(table: dict, key: str, where: str) -> int:
    if key not in table:
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.{key}'.", param=f"{where}.{key}"
        )
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"Invalid '{where}.{key}': expected an integer.", param=f"{where}.{key}"
        )
    return value


def windows(num_tokens: int, chunking: Chunking) -> list[tuple[int, int]]:
    """[start, end) token ranges: `max_chunk_size_tokens` long, each starting
    `max - overlap` after the one before, the last one ending at the text's end."""
    size, step = (
        chunking.max_chunk_size_tokens,
        chunking.max_chunk_size_tokens - chunking.chunk_overlap_tokens,
    )
    out, start = [], 0
    while start < num_tokens:
        end = min(start + size, num_tokens)
        out.append((start, end))
        if end == num_tokens:
            break
        start += step
    return out


def chunk_text(
    text: str, spans: list[tuple[int, int]], chunking: Chunking
) -> list[tuple[str, int]]:
    """(chunk text, its number of tokens) for `text`, whose tokens are at character
    `spans`. A chunk runs from its first token's start to its last token's end, so no
    word is cut inside a token; blank chunks are dropped."""
    out = []
    for start, end in windows(len(spans), chunking):
        piece = text[spans[start][0] : spans[end - 1][1]].strip()
        if piece:
            out.append((piece, end - start))
    return out
