"""Ingestion on the real broker and Redis: isolated topics, consumer group and Redis keys per test."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import pytest
import redis
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from driftline.kit.kafka import KafkaProducer
from driftline.kit.redis_clients import delete_keys
from driftline.kit.settings import KafkaSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import FEEDBACK, TRANSACTIONS_CLEAN, TRANSACTIONS_RAW, Topic
from driftline.services.ingestion.app import IngestionApp
from driftline.services.ingestion.config import Settings


@dataclass
class Running:
    """An IngestionApp consuming in a background thread of this process."""

    app: IngestionApp
    registry: CollectorRegistry
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    @property
    def consumed(self) -> int:
        return int(self.value("driftline_ingestion_consumed_total"))

    def wait_consumed(self, expected: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.consumed < expected and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        assert self.consumed == expected, f"consumed {self.consumed} of {expected}; errors: {self.errors}"

    def dead_lettered(self) -> dict[str, int]:
        counts = {}
        for metric in self.registry.collect():
            if metric.name == "driftline_ingestion_dead_lettered":
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        counts[sample.labels["reason"]] = int(sample.value)
        return counts


@dataclass
class Env:
    prefix: str
    kafka: KafkaSettings
    settings: Settings
    raw: Topic
    clean: Topic
    feedback: Topic
    redis: redis.Redis

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self.kafka)

    @contextmanager
    def ingestion(
        self,
        *,
        before_commit: Callable[[Sequence[Message]], None] | None = None,
        settings: Settings | None = None,
    ) -> Iterator[Running]:
        registry = CollectorRegistry()
        app = IngestionApp(
            settings or self.settings,
            raw_topic=self.raw,
            clean_topic=self.clean,
            registry=registry,
            before_commit=before_commit,
        )
        running = Running(app, registry, threading.Thread(target=lambda: None))

        def run() -> None:
            try:
                app.run()
            except BaseException as err:  # noqa: BLE001 - handed to the test, which asserts on it
                running.errors.append(err)

        running.thread = threading.Thread(target=run, name="ingestion-under-test", daemon=True)
        running.thread.start()
        try:
            yield running
        finally:
            app.stop()
            running.thread.join(timeout=30)
            assert not running.thread.is_alive(), "the ingestion loop did not stop"


@contextmanager
def ingestion_env(
    kafka: KafkaSettings, redis_settings: RedisSettings, batch_size: int = 500
) -> Iterator[Env]:
    prefix = unique_prefix()
    kafka = kafka.copy(update={"batch_size": batch_size, "poll_timeout_s": 0.2})
    raw, clean, feedback = (t.namespaced(prefix) for t in (TRANSACTIONS_RAW, TRANSACTIONS_CLEAN, FEEDBACK))
    create_test_topics(kafka, [raw, clean, feedback])
    settings = Settings(
        kafka=kafka,
        redis=redis_settings,
        group_id=f"{prefix}ingestion",
        dedup_key_prefix=f"{prefix}dedup:",
        metrics_port=0,
    )
    client = redis.Redis.from_url(redis_settings.url)
    try:
        yield Env(prefix, kafka, settings, raw, clean, feedback, client)
    finally:
        delete_keys(client, prefix)
        client.close()
        delete_topics(kafka, [raw, clean, feedback])


@pytest.fixture
def env(kafka_settings: KafkaSettings, redis_settings: RedisSettings) -> Iterator[Env]:
    with ingestion_env(kafka_settings, redis_settings) as e:
        yield e


@pytest.fixture(scope="session")
def make_env(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings
) -> Callable[..., AbstractContextManager[Env]]:
    """For module-scoped set-ups: ``with make_env(batch_size=...) as env``."""
    return functools.partial(ingestion_env, kafka_settings, redis_settings)
