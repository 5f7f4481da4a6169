"""Migrations applied over existing rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from ownllm.store.db import MIGRATIONS_DIR, Database, make_engine
from ownllm.store.schema import Adapter


def migrate(url: str, revision: str, down: bool = False) -> None:
    engine = make_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)
    engine.dispose()


def adapter_row(adapter_id: str, name: str, tenant_id: str) -> dict:
    return {
        "id": adapter_id,
        "name": name,
        "tenant_id": tenant_id,
        "base_model": "tiny",
        "base_sha256": "b" * 64,
        "parents": [],
        "source": "imported",
        "datasets": [],
        "hyperparameters": {},
        "metrics": {},
        "rank": 4,
        "target_modules": ["q_proj"],
        "size_bytes": 1,
        "sha256": "c" * 64,
        "path": f"adapters/{adapter_id}",
        "is_public": False,
        "created_at": 0,
    }


def test_0002_makes_adapter_names_unique_per_tenant(db_url):
    migrate(db_url, "0001")
    engine = make_engine(db_url)
    with engine.begin() as c:
        c.execute(insert(Adapter.__table__).values(adapter_row("adapter-01", "tone", "acme")))
    engine.dispose()
    db = Database.open(db_url)  # to head
    with db.engine.begin() as c:
        c.execute(insert(Adapter.__table__).values(adapter_row("adapter-02", "tone", "globex")))
    with pytest.raises(IntegrityError), db.engine.begin() as c:
        c.execute(insert(Adapter.__table__).values(adapter_row("adapter-03", "tone", "acme")))
    with db.engine.begin() as c:
        c.execute(Adapter.__table__.delete().where(Adapter.id == "adapter-02"))
    db.close()
    migrate(db_url, "0001", down=True)  # back to server-wide names while they are unique
    engine = make_engine(db_url)
    with pytest.raises(IntegrityError), engine.begin() as c:
        c.execute(insert(Adapter.__table__).values(adapter_row("adapter-04", "tone", "globex")))
    engine.dispose()
