"""A database the registry cannot reach, or that stays locked, is UNAVAILABLE (a status clients
may retry), not an internal error. Real drivers, no server: a PostgreSQL port nothing listens on,
and a SQLite file another connection keeps locked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from driftline.kit.errors import Unavailable
from driftline.kit.testing import free_port
from driftline.services.registry.store import Database
from driftline.services.registry.testing import sqlite_write_lock


def test_a_postgresql_that_refuses_connections_is_unavailable() -> None:
    database = Database(f"postgresql+psycopg://driftline:secret@127.0.0.1:{free_port()}/registry")
    try:
        with pytest.raises(Unavailable, match="database is unavailable") as err, database.read() as conn:
            conn.execute(text("SELECT 1"))
        assert err.value.status.name == "UNAVAILABLE"
    finally:
        database.dispose()


def test_a_sqlite_file_locked_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    database = Database(f"sqlite:///{path}", busy_timeout_s=0.2)
    database.create_schema()
    with sqlite_write_lock(path), pytest.raises(Unavailable), database.write() as conn:
        conn.execute(text("SELECT 1"))
    with database.write() as conn:  # the lock is gone: writes go through again
        assert conn.execute(text("SELECT 1")).scalar() == 1
    database.dispose()
