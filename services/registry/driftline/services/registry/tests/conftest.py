"""Fixtures for the registry's unit tests: a Registry over SQLite in a temporary directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftline.services.registry.artifacts import FilesystemArtifactStore
from driftline.services.registry.audit import AuditLog
from driftline.services.registry.core import Registry
from driftline.services.registry.security import OnnxValidator
from driftline.services.registry.store import Database


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.create_schema()
    yield db
    db.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> FilesystemArtifactStore:
    return FilesystemArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def registry(database: Database, artifacts: FilesystemArtifactStore, clock: Clock) -> Registry:
    return Registry(database, artifacts, OnnxValidator(1_000_000), AuditLog(), clock=clock)
