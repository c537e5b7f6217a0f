"""Test helpers: in-memory fakes for unit tests, and helpers for integration tests that talk to
the real broker (they never replace it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message

from driftline.kit.kafka import Headers
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import Topic, ensure_topics


@dataclass
class FakeMessage:
    """Quacks like ``confluent_kafka.Message`` for handlers under unit test."""

    _value: bytes | None
    _key: bytes | None = None
    _topic: str = "test.topic.v1"
    _partition: int = 0
    _offset: int = 0
    _headers: Headers = field(default_factory=list)
    _timestamp_ms: int = 0

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> Headers:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)

    def error(self) -> None:
        return None


def fake_messages(values: Iterable[bytes], topic: str = "test.topic.v1") -> list[FakeMessage]:
    return [FakeMessage(v, _topic=topic, _offset=i) for i, v in enumerate(values)]


def unique_prefix() -> str:
    """A topic/group/key prefix that no other test run shares."""
    return f"t{uuid.uuid4().hex[:10]}."


def create_test_topics(settings: KafkaSettings, topics: Sequence[Topic]) -> None:
    ensure_topics(settings.bootstrap_servers, [t for topic in topics for t in topic.with_dead_letter()])


def delete_topics(settings: KafkaSettings, topics: Sequence[Topic]) -> None:
    from confluent_kafka.admin import AdminClient

    names = [t.name for topic in topics for t in topic.with_dead_letter()]
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    for future in admin.delete_topics(names, operation_timeout=30).values():
        try:
            future.result()
        except Exception:  # noqa: BLE001 - cleanup of a topic that is already gone
            continue


def consume(settings: KafkaSettings, topic: str, *, expected: int, timeout_s: float = 30.0) -> list[Message]:
    """Read a topic from the beginning until ``expected`` messages arrived or the time is up."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages
