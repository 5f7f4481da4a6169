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


def test_0003_adds_metering_columns_with_zero_for_existing_rows(db_url):
    from sqlalchemy import column, select, table

    from ownllm.store.schema import UsageRecord

    migrate(db_url, "0002")
    old = {
        "request_id": "chatcmpl-1",
        "created_at": 0.0,
        "day": "1970-01-01",
        "tenant_id": "acme",
        "endpoint": "chat.completions",
        "model": "tiny",
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "cached_tokens": 0,
        "latency_ms": 1.0,
        "status": "ok",
        "http_status": 200,
    }
    usage_0002 = table("usage", *(column(name) for name in old))  # without the new columns
    engine = make_engine(db_url)
    with engine.begin() as c:
        c.execute(insert(usage_0002).values(old))
    engine.dispose()
    db = Database.open(db_url)  # to head
    with db.session() as s:
        row = s.scalars(select(UsageRecord)).one()
        assert (row.prompt_tokens, row.trained_tokens, row.bytes) == (5, 0, 0)
    db.close()
    migrate(db_url, "0002", down=True)
    engine = make_engine(db_url)
    with engine.begin() as c:
        assert c.execute(select(usage_0002.c.prompt_tokens)).scalar_one() == 5
    engine.dispose()
