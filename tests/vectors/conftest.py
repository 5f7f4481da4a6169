"""A database with one store (tenant acme) for the vectors tests, and chunk writers."""

from __future__ import annotations

import numpy as np
import pytest

from ownllm.gateway.principal import Principal
from ownllm.store.db import Database
from ownllm.store.schema import VectorStoreChunk
from ownllm.vectors import stores

ACME = Principal(tenant_id="acme")
GLOBEX = Principal(tenant_id="globex")


@pytest.fixture
def db(db_url):
    database = Database.open(db_url)
    yield database
    database.close()


@pytest.fixture
def store(db):
    return stores.create_store(
        db, ACME, name="docs", description=None, metadata=None, expires_after=None,
        embedding_model="all-minilm-l6-v2",
    )  # fmt: skip


def add_chunks(db, store, file_id: str, vectors: np.ndarray) -> None:
    with db.session() as s:
        s.add_all(
            VectorStoreChunk(
                vector_store_id=store.id,
                file_id=file_id,
                tenant_id=store.tenant_id,
                seq=i,
                text=f"{file_id} chunk {i}",
                num_tokens=3,
                vector=np.asarray(v, "<f4").tobytes(),
            )
            for i, v in enumerate(vectors)
        )
