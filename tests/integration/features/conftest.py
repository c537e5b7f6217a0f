"""Fixtures of the features integration tests: namespaced topics and Redis keys, and the service
run as a real subprocess (``python -m driftline.services.features``) against the real stack."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from driftline.events.v1 import transaction_pb2
from driftline.kit.codec import to_timestamp
from driftline.kit.kafka import KafkaProducer
from driftline.kit.redis_clients import delete_keys
from driftline.kit.settings import KafkaSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, free_port, unique_prefix, wait_for
from driftline.kit.topics import FEATURE_VECTORS, TRANSACTIONS_CLEAN, Topic

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Namespace:
    """One test's private topics, consumer group, Redis keys and offline store."""

    prefix: str
    source: Topic
    vectors: Topic
    key_prefix: str
    offline_root: Path
    app_id: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


@pytest.fixture
def namespace_factory(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> Iterator[Callable[[], Namespace]]:
    made: list[Namespace] = []

    def make() -> Namespace:
        prefix = unique_prefix()
        ns = Namespace(
            prefix=prefix,
            source=TRANSACTIONS_CLEAN.namespaced(prefix),
            vectors=FEATURE_VECTORS.namespaced(prefix),
            key_prefix=prefix.rstrip("."),
            offline_root=tmp_path / prefix.rstrip(".") / "offline",
            app_id=f"{prefix}features",
        )
        create_test_topics(kafka_settings, [ns.source, ns.vectors])
        made.append(ns)
        return ns

    yield make
    client = redis.Redis.from_url(redis_settings.url)
    for ns in made:
        clean_up(ns, kafka_settings, client)
    client.close()


def clean_up(ns: Any, kafka_settings: KafkaSettings, client: redis.Redis) -> None:
    """Kill what a test left running of ``ns``'s processes, delete its topics and its Redis keys."""
    for proc in ns.processes:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    delete_topics(kafka_settings, [ns.source, ns.vectors])
    delete_keys(client, f"{ns.key_prefix}:")


def start_service(
    ns: Namespace,
    log_path: Path,
    *,
    metrics_port: int = 0,
    environment: dict[str, str] | None = None,
    **overrides: str,
) -> subprocess.Popen[bytes]:
    """The service as a subprocess; ``overrides`` are its own settings (``DRIFTLINE_FEATURES_*``),
    ``environment`` any other variables (``DRIFTLINE_REDIS_URL``, say)."""
    env = dict(os.environ)
    env.update(
        {
            "DRIFTLINE_FEATURES_TOPIC_PREFIX": ns.prefix,
            "DRIFTLINE_FEATURES_APP_ID": ns.app_id,
            "DRIFTLINE_FEATURES_KEY_PREFIX": ns.key_prefix,
            "DRIFTLINE_FEATURES_OFFLINE_ROOT": str(ns.offline_root),
            "DRIFTLINE_FEATURES_OFFLINE_FLUSH_S": "0.5",
            "DRIFTLINE_FEATURES_WEB_ENABLED": "false",
            "DRIFTLINE_FEATURES_METRICS_PORT": str(metrics_port),
            "DRIFTLINE_FEATURES_DATA_DIR": str(ns.offline_root.parent / "faust"),
            "DRIFTLINE_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "DRIFTLINE_LOG_FORMAT": "json",
        }
    )
    env.update({f"DRIFTLINE_FEATURES_{k.upper()}": v for k, v in overrides.items()})
    env.update(environment or {})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.services.features"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
    ns.processes.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout_s)


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def transactions(
    count: int, cards: int, *, seed: int = 1, late_every: int = 0, spacing_s: float = 0.3
) -> list[transaction_pb2.CleanTransaction]:
    """Clean transactions in per-card event-time order; every ``late_every``-th one is late (but
    within 10 s, under the service's allowed lateness)."""
    rng = random.Random(seed)
    out = []
    countries = ["NL"] * 6 + ["DE", "BR"]
    for i in range(count):
        seconds = i * spacing_s
        if late_every and i and i % late_every == 0:
            seconds -= rng.uniform(1, 10)
        message = transaction_pb2.CleanTransaction(
            event_id=f"ev-{seed}-{i:06d}",
            card_id=f"card-{rng.randrange(cards):03d}",
            merchant_id=f"m{rng.randrange(40)}",
            amount=round(rng.lognormvariate(3.5, 1.0), 2),
            currency="EUR",
            merchant_category=rng.choice(["grocery", "fuel", "electronics", "travel", "restaurants"]),
            country=rng.choice(countries),
            channel=rng.choice(["pos", "online"]),
        )
        message.event_time.CopyFrom(to_timestamp(T0 + timedelta(seconds=seconds)))
        out.append(message)
    return out


def produce(settings: KafkaSettings, topic: Topic, messages: list[transaction_pb2.CleanTransaction]) -> None:
    producer = KafkaProducer(settings)
    for message in messages:
        producer.send(topic, message.SerializeToString(), key=message.card_id)
    producer.close()


class Harness:
    """What the tests call (conftest helpers are not importable under --import-mode=importlib)."""

    T0 = T0
    free_port = staticmethod(free_port)
    start_service = staticmethod(start_service)
    stop = staticmethod(stop)
    transactions = staticmethod(transactions)
    produce = staticmethod(produce)
    wait_for = staticmethod(wait_for)
    clean_up = staticmethod(clean_up)


@pytest.fixture
def harness() -> Harness:
    return Harness()
