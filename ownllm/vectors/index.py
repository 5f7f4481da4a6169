"""One vector store's index, loaded from its chunks in the database and kept per replica.

`IndexCache.get(db, store)` returns the store's `StoreIndex` at the store's current
`version`, loading it again when the version moved (a file completed or was removed on any
replica). A store below `exact_max_chunks` vectors is searched exactly (one matrix-vector
product); above it, a usearch HNSW graph (inner product over unit vectors, i.e. cosine)
is built once per version, and exact search remains the path for filtered searches, whose
allowed rows an ANN graph cannot skip without losing recall. `expansion_search` 256: at
100k MiniLM-like vectors recall@10 against exact search was 0.88 at 64, 0.96 at 128 and
0.99 at 256 (bench/RESULTS.md, bench/vector_store.py).

Each index holds one store, and a store belongs to one tenant, so no search can reach
another tenant's chunk through an index. The cache is bounded by the number of vectors
it holds (least recently used stores go first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from ownllm.store.db import Database
from ownllm.store.schema import VectorStore, VectorStoreChunk

HNSW_CONNECTIVITY = 16
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 256


@dataclass
class StoreIndex:
    """A store's vectors at one version: row i is chunk `chunk_ids[i]` of file
    `files[file_codes[i]]`."""

    store_id: str
    version: int
    chunk_ids: np.ndarray  # [N] int64
    file_codes: np.ndarray  # [N] int32, indexes into `files`
    files: list[str]
    vectors: np.ndarray  # [N, D] float32, unit length
    ann: object | None = None  # a usearch Index over the rows, when built

    @property
    def num_vectors(self) -> int:
        return len(self.chunk_ids)

    def rows_of(self, file_ids: set[str]) -> np.ndarray:
        """[N] bool: the rows that belong to `file_ids`."""
        codes = [i for i, f in enumerate(self.files) if f in file_ids]
        return np.isin(self.file_codes, np.asarray(codes, dtype=np.int32))

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None):
        """(rows, cosine scores) of the `k` nearest rows, best first; only `allowed` rows
        when given (exact search over them)."""
        if allowed is not None and not allowed.all():
            rows = np.flatnonzero(allowed)
            found, scores = exact_search(self.vectors[rows], query, k)
            return rows[found], scores
        if self.ann is not None:
            matches = self.ann.search(query, min(k, self.num_vectors))
            return matches.keys.astype(np.int64), 1.0 - matches.distances.astype(np.float32)
        return exact_search(self.vectors, query, k)


def exact_search(vectors: np.ndarray, query: np.ndarray, k: int):
    """(rows, scores) of the k largest inner products, best first."""
    if len(vectors) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = vectors @ query  # [N]
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top]


def build_ann(vectors: np.ndarray):
    """A usearch HNSW graph over the rows (keys are row numbers)."""
    from usearch.index import Index

    index = Index(
        ndim=vectors.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=HNSW_CONNECTIVITY,
        expansion_add=HNSW_EXPANSION_ADD,
        expansion_search=HNSW_EXPANSION_SEARCH,
    )
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=1)
    return index


def load_index(
    db: Database, store: VectorStore, dimensions: int, exact_max_chunks: int
) -> StoreIndex:
    """Read a store's chunks (their ids, files and vectors) and index them."""
    with db.session() as s:
        rows = s.execute(
            select(VectorStoreChunk.id, VectorStoreChunk.file_id, VectorStoreChunk.vector)
            .where(VectorStoreChunk.vector_store_id == store.id)
            .order_by(VectorStoreChunk.id)
        ).all()
    files: dict[str, int] = {}
    codes = np.fromiter((files.setdefault(r[1], len(files)) for r in rows), np.int32, len(rows))
    vectors = (
        np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), -1)
        if rows
        else np.zeros((0, dimensions), np.float32)
    )
    index = StoreIndex(
        store_id=store.id,
        version=store.version,
        chunk_ids=np.fromiter((r[0] for r in rows), np.int64, len(rows)),
        file_codes=codes,
        files=list(files),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
    )
    if index.num_vectors > exact_max_chunks:
        index.ann = build_ann(index.vectors)
    return index


class IndexCache:
    """The indexes of one replica: one per store, at most `max_vectors` vectors in all."""

    def __init__(self, exact_max_chunks: int = 20_000, max_vectors: int = 2_000_000) -> None:
        self.exact_max_chunks, self.max_vectors = exact_max_chunks, max_vectors
        self._indexes: OrderedDict[str, StoreIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, db: Database, store: VectorStore, dimensions: int) -> StoreIndex:
        """The store's index at `store.version` (blocking: call it in a thread)."""
        with self._lock:
            index = self._indexes.get(store.id)
            if index is not None and index.version == store.version:
                self._indexes.move_to_end(store.id)
                return index
            loading = self._loading.setdefault(store.id, threading.Lock())
        with loading:  # one load per store at a time; the others wait for it
            with self._lock:
                index = self._indexes.get(store.id)
            if index is None or index.version != store.version:
                index = load_index(db, store, dimensions, self.exact_max_chunks)
            with self._lock:
                self._indexes[store.id] = index
                self._indexes.move_to_end(store.id)
                self._evict()
        return index

    def drop(self, store_id: str) -> None:
        with self._lock:
            self._indexes.pop(store_id, None)

    def _evict(self) -> None:
        total = sum(i.num_vectors for i in self._indexes.values())
        while total > self.max_vectors and len(self._indexes) > 1:
            _, old = self._indexes.popitem(last=False)
            total -= old.num_vectors
