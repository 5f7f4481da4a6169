"""Shared fixtures: a tiny random model directory and databases (SQLite always,
PostgreSQL when OWNLLM_TEST_DATABASE_URL or OWNLLM_DATABASE_URL points at one)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def postgres_admin_url() -> str | None:
    for name in ("OWNLLM_TEST_DATABASE_URL", "OWNLLM_DATABASE_URL"):
        url = os.environ.get(name, "")
        if url.startswith("postgresql"):
            return url
    return None


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("no PostgreSQL: set OWNLLM_TEST_DATABASE_URL (.ci/run starts one)")
    from sqlalchemy import create_engine, text

    name = f"ownllm_t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with engine.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def two_tenants(db_url):
    """Tenants `acme` (.a) and `globex` (.b) with one key each, plus an admin key, on a
    fresh SQLite / PostgreSQL database; see tests/tenants.py (`gateway_state`)."""
    from ownllm.store.db import Database
    from tests.tenants import make_two_tenants

    db = Database.open(db_url)
    yield make_two_tenants(db, db_url)
    db.close()
