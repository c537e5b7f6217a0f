"""Moving a consumer group to the end of its topics, against the real broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from driftline.kit import kafka
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import Topic

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(kafka_settings: KafkaSettings):
    created = Topic(name=f"{unique_prefix()}kit.groups.v1", key="k", message=None, partitions=3)
    create_test_topics(kafka_settings, [created])
    yield created
    delete_topics(kafka_settings, [created])


def _produce(settings: KafkaSettings, topic: str, values: list[bytes], partition: int) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


def _consumer(settings: KafkaSettings, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def _read(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=count - len(got), timeout=0.5):
            if message.error() is None:
                got.append(message.value())
    return got


def test_a_group_skipped_to_the_end_reads_only_what_comes_after(kafka_settings, topic):
    group = f"{unique_prefix()}group"
    _produce(kafka_settings, topic.name, [b"old-0", b"old-1", b"old-2"], partition=0)
    consumer = _consumer(kafka_settings, group, topic.name)
    assert len(_read(consumer, 2)) == 2  # part of partition 0 read and committed
    consumer.commit(asynchronous=False)
    consumer.close()
    # Left behind: the rest of partition 0, and a partition the group never committed on.
    _produce(kafka_settings, topic.name, [b"old-3"], partition=0)
    _produce(kafka_settings, topic.name, [b"old-4", b"old-5"], partition=1)

    assert kafka.skip_to_end(kafka_settings, group) == 3  # every partition of the topic

    _produce(kafka_settings, topic.name, [b"new-0"], partition=0)
    _produce(kafka_settings, topic.name, [b"new-1"], partition=1)
    _produce(kafka_settings, topic.name, [b"new-2"], partition=2)
    consumer = _consumer(kafka_settings, group, topic.name)
    try:
        got = _read(consumer, 3)
        got += _read(consumer, 1, timeout_s=3.0)  # nothing else may follow
    finally:
        consumer.close()
    assert sorted(got) == [b"new-0", b"new-1", b"new-2"]


def test_a_group_with_no_committed_offsets_is_left_alone(kafka_settings, topic):
    assert kafka.skip_to_end(kafka_settings, f"{unique_prefix()}never-used") == 0


def test_a_group_with_an_active_member_cannot_be_moved(kafka_settings, topic):
    group = f"{unique_prefix()}busy"
    _produce(kafka_settings, topic.name, [b"m"], partition=0)
    consumer = _consumer(kafka_settings, group, topic.name)
    try:
        assert _read(consumer, 1) == [b"m"]
        consumer.commit(asynchronous=False)
        with pytest.raises(KafkaException):
            kafka.skip_to_end(kafka_settings, group)
    finally:
        consumer.close()
