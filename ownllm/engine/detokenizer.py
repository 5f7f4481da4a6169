"""Streaming detokenisation: token ids in, whole UTF-8 characters out, stop strings held back.

- `IncrementalDetokenizer.add(token_id)` returns the new text a token completes. It decodes a
  short window of recent tokens twice (up to the last emitted token, and with the new ones)
  and emits the difference — the prefix/read-offset technique of vLLM and TGI — so BPE
  merges, byte-fallback tokens, SentencePiece's leading-space rule and other context-dependent
  decoding come out as the full decode would give them. While the window's text ends in an
  incomplete UTF-8 sequence (U+FFFD) nothing is emitted.
- `StopChecker.feed(text)` emits text up to the first stop string and holds back exactly the
  tail that could still grow into one. The stop string itself is not emitted (OpenAI). "First"
  is the stop that completes earliest in the text, so where tokens split the text never
  changes the result.
- `TokenTexts` gives one token's raw bytes and text, for `TokenLogprob`.

Per choice, the engine does:

    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids)
    stops = StopChecker(params.stop)
    text, is_stopped = stops.feed(detok.add(token_id))      # each token; emit `text`
    text, _ = stops.feed(detok.flush()); text += stops.flush()  # at EOS / length

Tokenizers: `ownllm.models.tokenizer.Tokenizer` or a `tokenizers.Tokenizer`. The detokenizer
needs only `decode(ids, skip_special_tokens=...)`; `TokenTexts` reads the vocabulary and
decoder of the underlying `tokenizers.Tokenizer` (`.hf`).

Left out: stop token ids and EOS (the engine checks those on ids); `include_stop_str_in_output`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ownllm.engine.messages import TokenLogprob

# Tokens of context decoded before the first new token, so its leading space/merge is right.
PREFIX_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class IncrementalDetokenizer:
    """Text of one generated sequence, token by token."""

    def __init__(
        self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # Only the prompt's tail matters: it is the context the first new token decodes in.
        self._token_ids = list(prompt_token_ids[-PREFIX_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # window start: context for the first unread token
        self._read_offset = len(self._token_ids)  # tokens before it are emitted

    def add(self, token_id: int) -> str:
        """The whole characters `token_id` completes ("" while a character is incomplete)."""
        self._token_ids.append(token_id)
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        del self._token_ids[: self._prefix_offset]  # keep the window only
        self._read_offset -= self._prefix_offset
        self._prefix_offset = 0
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Text still held at the end of generation; a character cut short is dropped."""
        prefix_text, new_text = self._decode_window()
        self._prefix_offset = self._read_offset = len(self._token_ids)
        if len(new_text) <= len(prefix_text):
            return ""
        return new_text[len(prefix_text) :].rstrip(_REPLACEMENT_CHAR)

    def _decode_window(self) -> tuple[str, str]:
        ids = self._token_ids
        skip = self._skip_special_tokens
        prefix_text = self._tokenizer.decode(
            ids[self._prefix_offset : self._read_offset], skip_special_tokens=skip
        )
        new_text = self._tokenizer.decode(ids[self._prefix_offset :], skip_special_tokens=skip)
        return prefix_text, new_text


class StopChecker:
    """Truncates streamed text at the first stop string, holding back possible beginnings."""

    def __init__(self, stop: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stop if s)
        self._max_held = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self.is_stopped = False
        self.stop_string: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string has been reached)."""
        if self.is_stopped:
            return "", True
        if not self._stops:
            return text, False
        buffer = self._held + text
        match = self._first_stop(buffer)
        if match is not None:
            start, stop = match
            self.is_stopped, self.stop_string, self._held = True, stop, ""
            return buffer[:start], True
        num_held = self._num_held(buffer)
        self._held = buffer[len(buffer) - num_held :]
        return buffer[: len(buffer) - num_held], False

    def flush(self) -> str:
        """At the end of generation (EOS, length): the held text, which never became a stop."""
        held, self._held = self._held, ""
        return "" if self.is_stopped else held

    def _first_stop(self, buffer: str) -> tuple[int, str] | None:
        """(start, stop) of the occurrence that ends first; ties go to the longer stop."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = buffer.find(stop)
            if start < 0:
                continue
            key = (start + len(stop), start, stop)
            if best is None or key[:2] < best[:2]:
                best = key
        return None if best is None else (best[1], best[2])

    def _num_held(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that begins some stop string."""
        for n in range(min(self._max_held, len(buffer)), 0, -1):
            tail = buffer[-n:]
            if any(stop.startswith(tail) for stop in self._stops):
                return n
        return 0


class TokenTexts:
    """Raw bytes and text of single tokens (for logprobs), computed once per token id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._hf = getattr(tokenizer, "hf", tokenizer)
        decoder = json.loads(self._hf.to_str()).get("decoder") or {}
        kinds = _decoder_kinds(decoder)
        self._byte_level = "ByteLevel" in kinds
        self._byte_fallback = "ByteFallback" in kinds
        self._space_marker = "Metaspace" in kinds or "Replace▁" in kinds
        self._added = {i: t.content for i, t in self._hf.get_added_tokens_decoder().items()}
        self._cache: dict[int, bytes] = {}

    def token_bytes(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._compute_bytes(token_id)
        return cached

    def token_text(self, token_id: int) -> str:
        """The token alone as text; a partial UTF-8 piece shows as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def logprob(
        self, token_id: int, logprob: float, top: list[tuple[int, float]] | None = None
    ) -> TokenLogprob:
        """A `TokenLogprob` for the chosen token and its (token_id, logprob) alternatives."""
        return TokenLogprob(
            token_id=token_id,
            token=self.token_text(token_id),
            logprob=logprob,
            bytes=tuple(self.token_bytes(token_id)),
            top=tuple((t, self.token_text(t), lp) for t, lp in (top or [])),
        )

    def _compute_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self._hf.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_fallback and (m := _BYTE_FALLBACK.fullmatch(piece)):
            return bytes([int(m.group(1), 16)])
        if self._byte_level and all(c in _BYTE_DECODER for c in piece):
            return bytes(_BYTE_DECODER[c] for c in piece)
        if self._space_marker:
            return piece.replace("▁", " ").encode()
        return self._tokenizer.decode([token_id], skip_special_tokens=False).encode()


def _decoder_kinds(decoder: dict) -> set[str]:
    kinds = {decoder.get("type", "")}
    if decoder.get("type") == "Replace" and decoder.get("pattern", {}).get("String") == "▁":
        kinds.add("Replace▁")
    for child in decoder.get("decoders") or []:
        kinds |= _decoder_kinds(child)
    return kinds


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
