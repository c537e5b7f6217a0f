"""Consumer lag of a group from the broker's side: its committed offsets against the ends of the
partitions, for consumers that are not the kit's ``ConsumerLoop`` (which reports its own).

The features service runs on faust, whose consumer reports no lag of its own; this reads what
``kafka-consumer-groups --describe`` shows and sets the same ``driftline_kafka_consumer_lag``
gauge, so ``DriftlineConsumerLagHigh`` and the dashboards cover it too. Committed offsets are
the lag that matters for at-least-once delivery: what a restart would have to read again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import structlog
from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

from driftline.kit.kafka import CONSUMER_LAG, admin_client, committed_offsets, offsets_reader
from driftline.kit.settings import KafkaSettings

log = structlog.get_logger(__name__)


class GroupLag:
    """Reads a consumer group's lag on some topics through one admin client and one consumer that
    never joins the group (``kit.kafka.offsets_reader``), both kept from one read to the next."""

    def __init__(
        self, settings: KafkaSettings, group: str, topics: Sequence[str], *, timeout_s: float = 10.0
    ):
        self.group = group
        self.topics = list(topics)
        self._timeout_s = timeout_s
        self._admin = admin_client(settings)
        self._reader = offsets_reader(settings, group)

    def read(self) -> dict[tuple[str, int], int]:
        """Messages past the group's committed offset, by (topic, partition). A partition the group
        never committed on (offset -1001) counts from its earliest offset: all of it is still to
        be read. A partition whose committed offset the broker answered with an error is left out
        (its gauge keeps its last value) rather than counted as never committed."""
        try:
            return self._read()
        finally:
            # An admin client hands its librdkafka log lines over only when polled; unpolled,
            # they would pile up in it for as long as the service runs.
            self._admin.poll(0)
            self._reader.poll(0)

    def close(self) -> None:
        self._reader.close()

    def _read(self) -> dict[tuple[str, int], int]:
        timeout = self._timeout_s
        metadata = self._admin.list_topics(timeout=timeout).topics
        partitions = [
            TopicPartition(t, p) for t in self.topics if t in metadata for p in metadata[t].partitions
        ]
        if not partitions:
            return {}
        listed = committed_offsets(self._reader, partitions, timeout_s=timeout)
        committed = {_key(tp): tp.offset for tp in listed if not tp.error}
        ends = self._offsets(partitions, OffsetSpec.latest())
        # Retention may have deleted past a committed offset: the group then resumes at the
        # earliest one left (auto.offset.reset), so the lag counts from there.
        starts = self._offsets(partitions, OffsetSpec.earliest())
        return {
            key: max(0, end - max(committed[key], starts[key]))
            for key, end in ends.items()
            if key in committed
        }

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets({tp: spec for tp in partitions}, request_timeout=self._timeout_s)
        return {_key(tp): future.result(timeout=self._timeout_s).offset for tp, future in futures.items()}

    def report(self) -> dict[tuple[str, int], int]:
        """Read the lag and set ``driftline_kafka_consumer_lag`` for each partition; returns it."""
        lag = self.read()
        for (topic, partition), behind in lag.items():
            CONSUMER_LAG.labels(self.group, topic, str(partition)).set(behind)
        return lag


class LagReporter:
    """Reports a group's lag every ``interval_s`` on a daemon thread, until ``stop``. A round that
    fails (a broker that does not answer) is skipped, logged once until one succeeds again: the
    gauge keeps its last value."""

    def __init__(self, lag: GroupLag, *, interval_s: float = 15.0) -> None:
        self._lag = lag
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag-{lag.group}", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            # A round in flight waits on the broker's answers; the thread is a daemon, so a
            # shutdown does not wait for them.
            self._thread.join(1.0)
        if not self._thread.is_alive():  # never close the consumer under a round in flight
            self._lag.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._lag.report()
                self._failing = False
            except Exception as err:  # noqa: BLE001 - a failed round must not end the reporting
                if not self._failing:
                    log.warning(
                        "consumer_lag_unavailable",
                        group=self._lag.group,
                        error=f"{type(err).__name__}: {err}",
                    )
                self._failing = True
            self._stopping.wait(self._interval_s)


def _key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)
