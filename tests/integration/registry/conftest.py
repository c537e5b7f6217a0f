"""The registry against the real stack: SQLite in a temp dir, PostgreSQL (deploy/local/stack.sh
up postgres) in a schema of its own per test, and the real broker with namespaced topics."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import MODEL_EVENTS, Topic
from driftline.services.registry.app import RegistryApp
from driftline.services.registry.config import Settings
from driftline.services.registry.testing import settings_for_tests

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "registry-integration-token"
POSTGRES_HOSTPORT = ("127.0.0.1", 15432)
POSTGRES_URL = "postgresql+psycopg://driftline:driftline-dev@127.0.0.1:15432/driftline"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url(stack) -> str:
    """The stack's PostgreSQL, started with deploy/local/stack.sh when it is not running."""
    if not _reachable(*POSTGRES_HOSTPORT):
        started = stack("up", "postgres")
        if started.returncode != 0 or not _reachable(*POSTGRES_HOSTPORT):
            pytest.fail(
                f"PostgreSQL is not reachable on 15432 and `stack.sh up postgres` failed:\n{started.stderr}",
                pytrace=False,
            )
    return POSTGRES_URL


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema of this test's own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    yield name
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings overrides that select one metadata database."""
    if request.param == "sqlite":
        return {"database_url": f"sqlite:///{tmp_path / 'registry.db'}"}
    schema = request.getfixturevalue("postgres_schema")
    return {"database_url": request.getfixturevalue("postgres_url"), "database_schema": schema}


@pytest.fixture
def events_topic(kafka_settings: KafkaSettings) -> Iterator[Topic]:
    topic = MODEL_EVENTS.namespaced(unique_prefix())
    create_test_topics(kafka_settings, [topic])
    yield topic
    delete_topics(kafka_settings, [topic])


def registry_settings(tmp_path: Path, kafka: KafkaSettings, **overrides: Any) -> Settings:
    return settings_for_tests(tmp_path, kafka, TOKEN, **overrides)


StartRegistry = Callable[..., Awaitable[tuple[RegistryApp, str]]]


@pytest.fixture
async def start_registry(
    tmp_path: Path, kafka_settings: KafkaSettings, backend: dict[str, Any], events_topic: Topic
) -> AsyncIterator[StartRegistry]:
    """Start registries in-process on free ports; every one is stopped after the test."""
    started: list[RegistryApp] = []

    async def start(**overrides: Any) -> tuple[RegistryApp, str]:
        publisher = overrides.pop("publisher", None)
        settings = registry_settings(tmp_path, kafka_settings, **{**backend, **overrides})
        app = RegistryApp(settings, topic=events_topic, publisher=publisher)
        port = await app.start()
        started.append(app)
        return app, f"127.0.0.1:{port}"

    yield start
    for app in reversed(started):
        await app.stop()
