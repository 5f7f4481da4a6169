"""Database handle: engine, sessions, and migrations applied at start.

`Database.open(url)` creates the engine (SQLite with WAL and a busy timeout
so a server and a worker process can share the file; PostgreSQL through
psycopg 3) and upgrades the schema to the newest Alembic revision. A SQLite file is
created 0600 (its -wal and -shm files take the same mode) and an existing one is
made so when this user owns it: it holds keys and stored completions. Alembic's
own INFO lines (plugin setup, "Context impl") are kept out of the log: the
migrations actually applied get one line, and errors still raise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Select, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)

T = TypeVar("T")


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated; the message is one line for the user."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite_file(Path(path))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does; tighten the files of an old one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        return  # SQLite reports the problem (read-only directory, ...) in its own words
    owner = os.getuid() if hasattr(os, "getuid") else None
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = file.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == owner and st.st_mode & 0o077:
            os.chmod(file, 0o600)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent, safe at every start)."""
    _quiet_alembic()  # before the import: alembic logs its plugin setup at import time
    from alembic import command
    from alembic.config import Config as AlembicConfig

    applied: list[tuple[str, str]] = []  # (revision, its message)

    def on_version_apply(step, **_) -> None:
        if step.is_upgrade and step.up_revision is not None:
            applied.append((step.up_revision_id, step.up_revision.doc))

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["on_version_apply"] = on_version_apply  # read by migrations/env.py
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
    if applied:  # one line, however many: a new database gets them all
        (first, _), (last, doc) = applied[0], applied[-1]
        which = f"migration {last}" if first == last else f"migrations {first} to {last}"
        log.info("database %s: applied %s (%s)", engine.url, which, doc)  # url: password hidden


def _quiet_alembic() -> None:
    """Alembic's INFO lines say nothing an operator needs; its warnings still show. A level
    set on the `alembic` logger elsewhere (alembic.ini, the caller) wins, and so does DEBUG."""
    logger = logging.getLogger("alembic")
    if logger.level == logging.NOTSET and not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> Database:
        try:
            engine = make_engine(url)
            if migrate:
                upgrade(engine)
        except (SQLAlchemyError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatabaseError(f"cannot open database {_redact(url)}: {reason}") from None
        return cls(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A bare connection for a short read in plain SQL (no ORM session to build and
        commit: the request path's lookups); rolled back when it closes."""
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A short write transaction on a bare connection (committed on success).

        On SQLite this process's writers take turns on a lock first: SQLite admits one
        writer, and one that finds the file locked sleeps in its busy handler for 1, 2, 5,
        10, 15… ms between tries, far longer than such a write holds the lock. Other
        processes still meet the busy handler. On PostgreSQL row locks do the ordering.
        """
        if self.is_postgres:
            with self.engine.begin() as connection:
                yield connection
            return
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def claim_first(
        self, query: Select, locked: type, take: Callable[[Session, Row], T | None]
    ) -> T | None:
        """What `take(session, row)` returns for the first row of `query` (an UPDATE
        conditional on the row still being free makes it this worker's; None: it was not
        free any more); None when `query` finds none. On PostgreSQL rows of `locked` that
        another worker holds are skipped; a row taken between the read and the UPDATE
        costs a new try, up to five."""
        for _ in range(5):
            with self.session() as s:
                if self.is_postgres:
                    picked = s.execute(query.with_for_update(of=locked, skip_locked=True)).first()
                else:
                    picked = s.execute(query).first()
                if picked is None:
                    return None
                taken = take(s, picked)
            if taken is not None:
                return taken
        return None

    def close(self) -> None:
        self.engine.dispose()


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
