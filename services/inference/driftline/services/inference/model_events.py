"""Kafka adapter: reads registry model events and hands alias changes to the loader.

Each instance consumes with a consumer group of its own and starts at the end of the topic:
every instance must see every event (it is a broadcast, not a work queue), and history is not
replayed because the champion is resolved from the registry at start-up. To leave no gap
between the two, the partitions are pinned to their end offsets when they are assigned, and
start-up resolves the champion only after that (``wait_assigned``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from driftline.kit.codec import decode
from driftline.kit.kafka import LIBRDKAFKA_LOG
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import Topic
from driftline.registry.v1 import registry_pb2
from driftline.services.inference import metrics
from driftline.services.inference.loader import ChangeType, ModelChange

log = structlog.get_logger(__name__)

_TYPES = {
    registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET: ChangeType.ALIAS_SET,
    registry_pb2.MODEL_EVENT_TYPE_ALIAS_DELETED: ChangeType.ALIAS_DELETED,
}


def to_change(event: registry_pb2.ModelEvent) -> ModelChange:
    return ModelChange(
        type=_TYPES.get(event.type, ChangeType.OTHER),
        model_name=event.model_name,
        alias=event.alias,
        version=event.version,
        sha256=event.artifact_sha256,
        event_id=event.event_id,
    )


class ModelEventsListener:
    """A daemon thread that polls the model-events topic and calls ``apply`` for each event."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: Topic,
        apply: Callable[[ModelChange], bool],
        *,
        group_prefix: str = "inference",
    ) -> None:
        self.group_id = f"{group_prefix}-{uuid.uuid4().hex[:12]}"
        self._settings = settings
        self._topic = topic
        self._apply = apply
        self._consumer = Consumer(
            {
                **settings.connection(),
                "client.id": settings.client_id,
                "logger": LIBRDKAFKA_LOG,
                "group.id": self.group_id,
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "session.timeout.ms": settings.session_timeout_ms,
                "isolation.level": "read_committed",
            }
        )
        self._assigned = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-events", daemon=True)

    def start(self) -> None:
        self._consumer.subscribe([self._topic.name], on_assign=self._on_assign)
        self._thread.start()

    def wait_assigned(self, timeout_s: float) -> bool:
        """Wait until the partitions are assigned and pinned to their end offsets."""
        return self._assigned.wait(timeout_s)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        pinned = []
        for partition in partitions:
            _low, high = consumer.get_watermark_offsets(partition, timeout=10, cached=False)
            pinned.append(TopicPartition(partition.topic, partition.partition, high))
        consumer.assign(pinned)
        self._assigned.set()
        log.info(
            "model_events_assigned", group=self.group_id, offsets={p.partition: p.offset for p in pinned}
        )

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(self._settings.poll_timeout_s)
                if message is None:
                    continue
                self._handle(message)
        finally:
            self._consumer.close()

    def _handle(self, message: Message) -> None:
        err = message.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("model_events_error", error=str(err))
            return
        try:
            event = decode(registry_pb2.ModelEvent, message.value() or b"")
        except ValueError as exc:
            metrics.MODEL_EVENTS.labels("undecodable", "false").inc()
            log.warning("model_event_undecodable", offset=message.offset(), error=str(exc))
            return
        change = to_change(event)
        applied = self._apply(change)
        metrics.MODEL_EVENTS.labels(change.type.value, str(applied).lower()).inc()
        log.info(
            "model_event",
            type=change.type.value,
            model=change.model_name,
            alias=change.alias,
            version=change.version,
            applied=applied,
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
