"""Search over the index cache: one replica's cache holds every tenant's stores, and a
search reaches only the chunks of the stores it names, on the exact path and on the
usearch graph alike."""

import numpy as np
import pytest

from ownllm.store.schema import VectorStoreChunk, VectorStoreFile
from ownllm.vectors import stores
from ownllm.vectors.index import IndexCache
from ownllm.vectors.search import search
from tests.vectors.conftest import ACME, GLOBEX, add_chunks


def completed(db, store, file_id: str) -> None:
    with db.session() as s:
        s.add(
            VectorStoreFile(
                vector_store_id=store.id, file_id=file_id, tenant_id=store.tenant_id,
                status="completed", chunking={"max_chunk_size_tokens": 100,
                "chunk_overlap_tokens": 0}, created_at=0, seq=0,
            )
        )  # fmt: skip


def chunk_store(db, chunk_id: int) -> str:
    with db.session() as s:
        return s.get(VectorStoreChunk, chunk_id).vector_store_id


@pytest.mark.parametrize("exact_max_chunks", [10_000, 50], ids=["exact", "usearch"])
def test_a_search_never_returns_another_tenants_chunk(db, store, exact_max_chunks):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((200, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    theirs = stores.create_store(
        db, GLOBEX, name="docs", description=None, metadata=None, expires_after=None,
        embedding_model="all-minilm-l6-v2",
    )  # fmt: skip
    # the same vectors in both tenants' stores: each query has an exact twin in each
    add_chunks(db, store, "file-acme", vectors)
    add_chunks(db, theirs, "file-globex", vectors)
    completed(db, store, "file-acme")
    completed(db, theirs, "file-globex")
    cache = IndexCache(exact_max_chunks=exact_max_chunks)  # one replica, both tenants
    for q in vectors[:20]:
        for mine, tenant in ((store, ACME), (theirs, GLOBEX)):
            hits = search(db, cache, [mine], [q.tolist()], max_num_results=50, dimensions=32)
            assert len(hits) == 50 and hits[0].score == pytest.approx(1.0, abs=1e-5)
            assert {h.store_id for h in hits} == {mine.id}
            assert {h.file_id for h in hits} == {f"file-{tenant.tenant_id}"}
            assert {chunk_store(db, h.chunk_id) for h in hits[:5]} == {mine.id}
    acme_index, globex_index = cache.get(db, store, 32), cache.get(db, theirs, 32)
    assert acme_index is not globex_index
    assert (acme_index.ann is not None) == (exact_max_chunks < 200)
    assert set(acme_index.chunk_ids.tolist()).isdisjoint(globex_index.chunk_ids.tolist())
