import logging
import os
import stat
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from ownllm.store.db import Database, DatabaseError
from ownllm.store.schema import Base, File, Tenant


def test_migrations_create_exactly_the_schema(db_url):
    db = Database.open(db_url)
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    assert {"tenants", "api_keys", "files", "fine_tuning_jobs", "adapters", "usage"} <= tables
    db.close()


def test_open_twice_is_idempotent_and_keeps_rows(db_url):
    db = Database.open(db_url)
    with db.session() as s:
        s.add(Tenant(id="acme", created_at=int(time.time())))
    db.close()
    db = Database.open(db_url)
    with db.session() as s:
        assert s.scalars(select(Tenant.id)).all() == ["acme"]
    db.close()


def test_failed_transaction_rolls_back(db_url):
    db = Database.open(db_url)
    with pytest.raises(RuntimeError), db.session() as s:
        s.add(
            File(
                id="file-1",
                tenant_id="acme",
                filename="a.jsonl",
                purpose="fine-tune",
                bytes=1,
                sha256="0" * 64,
                path="files/file-1",
                created_at=0,
            )
        )
        s.flush()
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.get(File, "file-1") is None
    assert db.ping()
    db.close()


def test_unreachable_database_is_one_clear_line():
    with pytest.raises(DatabaseError) as info:
        Database.open("postgresql+psycopg://user:secret@127.0.0.1:1/none")
    message = str(info.value)
    assert "cannot open database" in message and "secret" not in message
    assert "\n" not in message


def test_migrating_says_one_line_and_alembic_says_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    url = f"sqlite:///{tmp_path / 'ownllm.db'}"
    Database.open(url).close()
    assert [r.name for r in caplog.records] == ["ownllm.store.db"], caplog.text
    assert f"database {url}: applied migration" in caplog.records[0].getMessage()
    assert "0001" in caplog.records[0].getMessage()
    caplog.clear()
    Database.open(url).close()
    assert caplog.records == []  # nothing applied, nothing said


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_the_sqlite_files_are_0600_even_when_an_old_one_was_0644(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "data" / "ownllm.db"
        db = Database.open(f"sqlite:///{path}")
        with db.session() as s:
            s.add(Tenant(id="acme", created_at=0))
        files = [path, path.with_name("ownllm.db-wal"), path.with_name("ownllm.db-shm")]
        assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600] * 3
        db.close()
        os.chmod(path, 0o644)  # what older versions left
        Database.open(f"sqlite:///{path}").close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
