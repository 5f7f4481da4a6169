"""Search: query vectors against one or more of a tenant's stores, scored chunks out.

Only chunks of `completed` files count (a file being ingested has chunks already, and a
removed one may linger in an index until its version is seen), and with a filter only
those of files whose attributes match it. Several queries (OpenAI's `query` list) are
searched each, and a chunk keeps its best score. Scores are cosine similarities, clamped
to [0, 1] as OpenAI's scores are; `score_threshold` drops those below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from ownllm.store.db import Database
from ownllm.store.schema import VectorStore, VectorStoreChunk
from ownllm.vectors.filters import Predicate
from ownllm.vectors.index import IndexCache
from ownllm.vectors.stores import completed_files


@dataclass
class Hit:
    store_id: str
    file_id: str
    filename: str
    attributes: dict[str, Any]
    chunk_id: int
    score: float
    text: str = ""

    def result(self) -> dict[str, Any]:
        """The OpenAI search result item."""
        return {
            "file_id": self.file_id,
            "filename": self.filename,
            "score": self.score,
            "attributes": self.attributes,
            "content": [{"type": "text", "text": self.text}],
        }


def search(
    db: Database,
    cache: IndexCache,
    stores: list[VectorStore],
    queries: list[list[float]],
    *,
    max_num_results: int,
    predicate: Predicate | None = None,
    score_threshold: float = 0.0,
    dimensions: int,
) -> list[Hit]:
    """The best `max_num_results` chunks of `stores` for `queries` (blocking: run it in a
    thread). The stores are the caller's, already checked to be the principal's."""
    files = completed_files(db, [s.id for s in stores])
    best: dict[int, Hit] = {}
    for store in stores:
        allowed_files = {
            file_id
            for (store_id, file_id), (_, attributes) in files.items()
            if store_id == store.id and (predicate is None or predicate(attributes))
        }
        if not allowed_files:
            continue
        index = cache.get(db, store, dimensions)
        allowed = index.rows_of(allowed_files)
        if not allowed.any():
            continue
        for query in queries:
            q = np.asarray(query, dtype=np.float32)
            rows, scores = index.search(q, max_num_results, allowed)
            for row, score in zip(rows.tolist(), scores.tolist()):
                if row < 0 or not allowed[row]:
                    continue
                chunk_id = int(index.chunk_ids[row])
                score = min(1.0, max(0.0, float(score)))
                if score < score_threshold:
                    continue
                if chunk_id not in best or best[chunk_id].score < score:
                    file_id = index.files[index.file_codes[row]]
                    filename, attributes = files[(store.id, file_id)]
                    best[chunk_id] = Hit(store.id, file_id, filename, attributes, chunk_id, score)
    hits = sorted(best.values(), key=lambda h: (-h.score, h.chunk_id))[:max_num_results]
    if hits:
        with db.session() as s:
            texts = dict(
                s.execute(
                    select(VectorStoreChunk.id, VectorStoreChunk.text).where(
                        VectorStoreChunk.id.in_([h.chunk_id for h in hits])
                    )
                ).all()
            )
        for h in hits:
            h.text = texts.get(h.chunk_id, "")
    return hits
