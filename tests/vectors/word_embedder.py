"""A stand-in embedding model for vector store tests: no weights, real retrieval.

Each word (a run of letters and digits, lower-cased) is a token; a text's vector is its
word counts hashed (crc32) into 64 buckets, L2-normalised. So texts that share words
score high and texts that share none score 0: a test can say which chunk a query must
find. `embedded` records what it embedded; `fail_on`, when set, makes `embed` raise on a
text containing it (a crash in the middle of a file)."""

from __future__ import annotations

import re
import zlib

import numpy as np

WORD = re.compile(r"\w+")


class WordEmbedder:
    dimensions = 64
    max_length = 512

    def __init__(self) -> None:
        self.embedded: list[str] = []
        self.fail_on: str | None = None

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in WORD.finditer(text)]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [[zlib.crc32(w.lower().encode()) % 30000 for w in WORD.findall(t)] for t in texts]

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            if self.fail_on is not None and self.fail_on in text:
                raise RuntimeError(f"embedding failed on {self.fail_on!r}")
            v = np.zeros(self.dimensions, dtype=np.float32)
            for word in WORD.findall(text.lower()):
                v[zlib.crc32(word.encode()) % self.dimensions] += 1.0
            norm = np.linalg.norm(v)
            out.append((v / norm if norm else v).tolist())
        self.embedded += texts
        return out
