"""Fixtures shared by the cross-service tests. They talk to the real local stack (`make up`)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from driftline.kit.settings import KafkaSettings, RedisSettings

ROOT = Path(__file__).resolve().parents[1]


def _broker_version() -> str:
    """The version the running broker printed at start-up (its own log, not our config)."""
    log = ROOT / ".run" / "logs" / "kafka.log"
    if not log.exists():
        return "unknown (no broker log)"
    found = "unknown"
    with log.open(errors="replace") as handle:
        for line in handle:
            match = re.search(r"Kafka version: (\S+)", line)
            if match:
                found = match.group(1)
    return found


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"kafka broker version: {_broker_version()}"]


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    settings = KafkaSettings()
    first = settings.bootstrap_servers.split(",")[0]
    if not _reachable(first):
        pytest.fail(f"Kafka is not reachable at {first}: run `make up` first", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def redis_settings() -> RedisSettings:
    settings = RedisSettings()
    hostport = settings.url.rsplit("@", 1)[-1].split("/")[0]
    if not _reachable(hostport):
        pytest.fail(f"Redis is not reachable at {hostport}: run `make up` first", pytrace=False)
    return settings
