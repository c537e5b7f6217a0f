"""Kafka producer and consumer loop with at-least-once delivery and dead-letter routing.

The producer is idempotent (``acks=all``, ``enable.idempotence``) and never fire-and-forget:
every send returns a future, and ``flush`` raises when any message was not acknowledged.

The consumer loop handles a batch of messages and sends every output; it commits the batch's
offsets only once the broker has acknowledged all of them. Batches are pipelined: while one
batch's outputs are in flight the loop already handles the next (at most
``max_in_flight_batches``; a handler may prepare the next batch while the current one's outputs
are produced), and batches are committed strictly in order. A message that cannot
be processed goes to its topic's dead-letter topic with the reason in headers; the loop goes on.
A process killed between output and commit reprocesses the uncommitted batches when it restarts:
effects must therefore be idempotent, which keys and event ids make them.

The package's modules: ``messages`` (headers, outputs, dead-letter verdicts, batch handlers),
``producer``, ``consumer`` (the loop), ``admin`` (group offsets) and ``librdkafka`` (where the
client library's log lines go). Import from the package: its names are the stable ones.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from driftline.kit.kafka.admin import admin_client, committed_offsets, offsets_reader, skip_to_end
from driftline.kit.kafka.consumer import (
    BATCH_SECONDS,
    CONSUMED,
    CONSUMER_LAG,
    DEAD_LETTERED,
    HANDED_BACK,
    HANDLER_RETRIES,
    SKIPPED,
    ConsumerHooks,
    ConsumerLoop,
    install_signal_handlers,
)
from driftline.kit.kafka.librdkafka import LIBRDKAFKA_LOG
from driftline.kit.kafka.messages import (
    CONTENT_TYPE,
    DLQ_DETAIL,
    DLQ_REASON,
    DLQ_SERVICE,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TIMESTAMP,
    DLQ_SOURCE_TOPIC,
    JSON,
    PROTOBUF,
    BatchHandler,
    DeadLetter,
    Headers,
    Outcome,
    Output,
    PoisonMessage,
    decode_value,
    header,
    per_message,
)
from driftline.kit.kafka.producer import (
    DELIVERY_FAILURES,
    PRODUCED,
    Deliveries,
    DeliveryError,
    DeliveryReports,
    KafkaProducer,
    producer_config,
    wait_all,
)

__all__ = [
    "BATCH_SECONDS",
    "CONSUMED",
    "CONSUMER_LAG",
    "CONTENT_TYPE",
    "DEAD_LETTERED",
    "DELIVERY_FAILURES",
    "DLQ_DETAIL",
    "DLQ_REASON",
    "DLQ_SERVICE",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TIMESTAMP",
    "DLQ_SOURCE_TOPIC",
    "HANDED_BACK",
    "HANDLER_RETRIES",
    "JSON",
    "LIBRDKAFKA_LOG",
    "PRODUCED",
    "PROTOBUF",
    "SKIPPED",
    "BatchHandler",
    "ConsumerHooks",
    "ConsumerLoop",
    "DeadLetter",
    "Deliveries",
    "DeliveryError",
    "DeliveryReports",
    "Headers",
    "KafkaError",
    "KafkaException",
    "KafkaProducer",
    "Message",
    "Outcome",
    "Output",
    "PoisonMessage",
    "TopicPartition",
    "admin_client",
    "committed_offsets",
    "decode_value",
    "header",
    "install_signal_handlers",
    "offsets_reader",
    "per_message",
    "producer_config",
    "skip_to_end",
    "wait_all",
]
