"""The metadata database: SQLite by default, PostgreSQL for shared deployments.

Every write runs in one transaction that first takes the write lock of the rows it changes:
``BEGIN IMMEDIATE`` on SQLite (one writer at a time), ``SELECT ... FOR UPDATE`` on PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from driftline.kit.errors import InvalidArgument, Unavailable
from driftline.services.registry.store import schema

log = structlog.get_logger(__name__)

GENESIS_HASH = "0" * 64
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)
_WRITE = "driftline_write"


class Database:
    """An engine configured for the registry's transactions, and the schema it needs."""

    def __init__(self, url: str, *, schema_name: str | None = None, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            self.dialect = "sqlite"
            _ensure_sqlite_dir(url)
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        elif url.startswith("postgresql"):
            self.dialect = "postgresql"
            connect_args: dict[str, Any] = {"connect_timeout": 10}
            if schema_name:
                if not _SCHEMA_NAME.fullmatch(schema_name):
                    raise InvalidArgument(f"invalid PostgreSQL schema name {schema_name!r}")
                connect_args["options"] = f"-csearch_path={schema_name}"
            kwargs["connect_args"] = connect_args
            kwargs["pool_size"] = 10
        else:
            raise InvalidArgument(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")
        self.engine: Engine = create_engine(url, **kwargs)
        self.schema_name = schema_name
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)

    def create_schema(self) -> None:
        """Create missing tables (safe to repeat) and the audit chain's head row."""
        if self.dialect == "postgresql" and self.schema_name:
            with self.engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema_name}"'))
        schema.metadata.create_all(self.engine)
        try:
            with self.write() as conn:
                if conn.execute(select(schema.audit_head.c.id)).first() is None:
                    conn.execute(insert(schema.audit_head).values(id=1, seq=0, hash=GENESIS_HASH, at_us=0))
        except IntegrityError:
            # Another replica created it first.
            pass

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that may write; committed on success, rolled back on any exception."""
        with _unavailable_when_unreachable(), self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (on SQLite it takes no write lock)."""
        with _unavailable_when_unreachable(), self.engine.connect() as conn, conn.begin():
            yield conn

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _unavailable_when_unreachable() -> Iterator[None]:
    """The database refused, dropped or timed out a connection, or stayed locked past the busy
    timeout (``OperationalError``): callers get UNAVAILABLE, a status clients may retry, rather
    than INTERNAL. As with any lost connection, a write whose commit was under way when it was
    lost may have been applied: clients read before they write again."""
    try:
        yield
    except OperationalError as err:
        raise Unavailable(f"the registry's database is unavailable: {type(err.orig).__name__}") from err


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1] if "///" in url else ""
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: two writers never both read the old state and
        # then race to upgrade their locks.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
