"""A stand-in for the embedding model (all-MiniLM-L6-v2) in API tests: no weights, fixed
vectors, observable calls."""

from __future__ import annotations

import threading


class StubEmbeddingModel:
    """Stands in for all-MiniLM-L6-v2: a token a word plus two special tokens, vectors
    [len(text), 0.5, -1.0]. `embedded` records the texts it was given; with `gate` set,
    `embed` signals `entered` and waits for the gate (to hold a request in flight)."""

    dimensions = 3
    max_length = 8

    def __init__(self) -> None:
        self.embedded: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(range(len(t.split()) + 2)) for t in texts]

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=120):
            raise TimeoutError("the test never opened the gate")
        self.embedded += texts
        return [[float(len(t)), 0.5, -1.0] for t in texts]
