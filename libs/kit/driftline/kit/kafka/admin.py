"""Admin helpers: consumer groups' committed offsets, and moving a group to the end of its topics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from driftline.kit.kafka.librdkafka import LIBRDKAFKA_LOG
from driftline.kit.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

log = structlog.get_logger(__name__)


def admin_client(settings: KafkaSettings) -> AdminClient:
    """An admin client whose librdkafka lines go through ``LIBRDKAFKA_LOG`` like the others'.
    An admin client hands them over only when polled: call ``poll(0)`` after its requests, or
    they pile up in it unread."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {**settings.connection(), "logger": LIBRDKAFKA_LOG}
    return AdminClient(conf)


#: Answers to a group request while the group's coordinator is not ready yet: worth a retry.
#: (librdkafka raises these without its retriable flag.)
_COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def offsets_reader(settings: KafkaSettings, group: str) -> Consumer:
    """A consumer of ``group`` that never subscribes, hence never joins the group: what
    ``committed_offsets`` reads a group's offsets with. Close it when done."""
    return Consumer(
        {
            **settings.connection(),
            "group.id": group,
            "enable.auto.commit": False,
            "logger": LIBRDKAFKA_LOG,
        }
    )


def committed_offsets(
    reader: Consumer, partitions: Sequence[TopicPartition], *, timeout_s: float = 30.0
) -> list[TopicPartition]:
    """The committed offsets of ``reader``'s group (``offsets_reader``) on ``partitions``: offset
    -1001 where it never committed, ``error`` set where the broker answered one with an error.
    Retried while the group's coordinator is not ready (a new cluster answers NOT_COORDINATOR
    while it creates its offsets topic), until ``timeout_s``.

    Not the admin client's ``list_consumer_group_offsets``: in confluent-kafka 2.16 that call
    kills the process (SIGSEGV) when it meets a cluster whose offsets topic does not exist yet,
    which is every new cluster until its first group commits (confluent-kafka-python #1982).
    """
    if not partitions:
        return []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return list(reader.committed(list(partitions), timeout=max(0.1, deadline - time.monotonic())))
        except KafkaException as err:
            if err.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() + 0.2 >= deadline:
                raise
            time.sleep(0.2)


def skip_to_end(settings: KafkaSettings, group: str, *, timeout_s: float = 30.0) -> int:
    """Move a consumer group to the end of every topic it has committed offsets on (all of each
    topic's partitions), so that it next consumes only what is produced from now on (what
    ``kafka-consumer-groups --reset-offsets --to-latest`` does). Returns how many partitions moved;
    a group with no committed offsets is left to its ``auto.offset.reset``.

    The group must have no active member (the broker refuses otherwise: ``KafkaException``).
    """
    admin = admin_client(settings)
    try:
        return _skip_to_end(admin, settings, group, timeout_s)
    finally:
        admin.poll(0)  # hand its log lines over


def _skip_to_end(admin: AdminClient, settings: KafkaSettings, group: str, timeout_s: float) -> int:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import OffsetSpec

    metadata = admin.list_topics(timeout=timeout_s).topics
    everywhere = [
        TopicPartition(t, p)
        for t, meta in metadata.items()
        if not t.startswith("__")
        for p in meta.partitions
    ]
    reader = offsets_reader(settings, group)
    try:
        listed = committed_offsets(reader, everywhere, timeout_s=timeout_s)
    finally:
        reader.close()
    topics = sorted({tp.topic for tp in listed if tp.error is None and tp.offset >= 0})
    if not topics:
        return 0
    partitions = [TopicPartition(t, p) for t in topics for p in metadata[t].partitions]
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout_s)
    moved = [
        TopicPartition(tp.topic, tp.partition, f.result(timeout=timeout_s).offset) for tp, f in ends.items()
    ]
    altered = admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, moved)], request_timeout=timeout_s
    )
    refused = [tp for tp in altered[group].result(timeout=timeout_s).topic_partitions or [] if tp.error]
    if refused:  # per partition, e.g. while the group has members
        raise KafkaException(refused[0].error)
    log.info("consumer_group_skipped_to_end", group=group, topics=topics, partitions=len(moved))
    return len(moved)
