"""The store index: exact search, the usearch graph above the threshold, reloads when the
store's version moves, and filtered rows."""

import numpy as np

from ownllm.vectors.index import IndexCache, exact_search, load_index
from tests.vectors.conftest import add_chunks


def unit(rng, n, d=32):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_exact_search_returns_the_best_first():
    vectors = np.eye(4, dtype=np.float32)
    rows, scores = exact_search(vectors, np.array([0.1, 0.9, 0.3, 0], np.float32), 2)
    assert rows.tolist() == [1, 2] and np.allclose(scores, [0.9, 0.3])


def test_ann_finds_what_exact_search_finds(db, store):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 3000)
    add_chunks(db, store, "file-a", vectors)
    exact = load_index(db, store, 32, exact_max_chunks=10_000)
    ann = load_index(db, store, 32, exact_max_chunks=100)
    assert exact.ann is None and ann.ann is not None
    recalls = []
    for q in unit(rng, 50):
        want = set(exact.search(q, 10)[0].tolist())
        rows, scores = ann.search(q, 10)
        recalls.append(len(want & set(rows.tolist())) / 10)
        assert np.allclose(scores, ann.vectors[rows] @ q, atol=1e-4)  # scores are cosines
    assert np.mean(recalls) >= 0.9


def test_filtered_rows_are_searched_exactly(db, store):
    rng = np.random.default_rng(1)
    add_chunks(db, store, "file-a", unit(rng, 300))
    add_chunks(db, store, "file-b", unit(rng, 300))
    index = load_index(db, store, 32, exact_max_chunks=100)  # with a graph
    allowed = index.rows_of({"file-b"})
    for q in unit(rng, 10):
        rows, _ = index.search(q, 10, allowed)
        assert len(rows) == 10 and all(index.files[index.file_codes[r]] == "file-b" for r in rows)


def test_the_cache_reloads_when_the_version_moves(db, store):
    cache = IndexCache(exact_max_chunks=1000)
    add_chunks(db, store, "file-a", unit(np.random.default_rng(2), 5))
    first = cache.get(db, store, 32)
    assert cache.get(db, store, 32) is first and first.num_vectors == 5
    add_chunks(db, store, "file-b", unit(np.random.default_rng(3), 3))
    store.version += 1
    assert cache.get(db, store, 32).num_vectors == 8
