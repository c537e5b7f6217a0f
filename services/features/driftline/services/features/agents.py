"""Faust adapters: wire bytes in, domain calls, wire bytes out.

Faust acks an event whose handler raised, and acks a ``take()`` batch even when its processing
was cancelled mid-way. These agents therefore take batches with ``noack_take`` and ack each event
themselves only once its effects are done: its state and features committed in Redis, its
vector or dead letter acknowledged by the broker. A handler error never escapes: the batch is
retried, then each event alone, and what still fails goes to the dead-letter topic with the
reason in ``dlq.*`` headers (the names ``driftline.kit.kafka`` uses), and is acked after that.

Outputs (vectors, dead letters) go through the kit's confluent-kafka producer rather than faust's
aiokafka one: same partitioner and delivery settings as every other Driftline producer, and a
fraction of the CPU per message (see docs/adr/0004-features-outputs-through-the-kit-producer.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from confluent_kafka import KafkaError
from faust import Stream
from faust.types import EventT

from driftline.events.v1 import transaction_pb2
from driftline.features.v1 import features_pb2
from driftline.featurestore.definitions import FeatureSet
from driftline.featurestore.events import Event, epoch_seconds, transaction_event
from driftline.featurestore.offline import FeatureRow
from driftline.featurestore.vectors import VectorEncoder
from driftline.kit import kafka
from driftline.kit.codec import decode
from driftline.kit.outages import OutagePolicy
from driftline.kit.redis_clients import REDIS_OUTAGE
from driftline.services.features import metrics
from driftline.services.features.processor import FeatureProcessor, Processed
from driftline.services.features.sink import Malformed, OfflineSink

log = structlog.get_logger(__name__)


class PoisonEvent(Exception):
    """An event that will never be processed: it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_transaction(payload: bytes | None) -> Event:
    """The engine event of a clean transaction's bytes; PoisonEvent when it is not a valid one."""
    if not payload:
        raise PoisonEvent("empty_value", "no value bytes")
    try:
        tx = decode(transaction_pb2.CleanTransaction, payload)
    except ValueError as err:
        raise PoisonEvent("decode_error", str(err)) from err
    if not tx.event_id or not tx.card_id:
        raise PoisonEvent("invalid_event", "event_id and card_id are required")
    if not tx.HasField("event_time"):
        raise PoisonEvent("invalid_event", "event_time is required")
    if not math.isfinite(tx.amount):
        raise PoisonEvent("invalid_event", f"amount is {tx.amount}")
    return transaction_event(tx)


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), bytes(v) if v is not None else b"") for k, v in items]


class Publisher(Protocol):
    """Where outputs go: ``send`` queues, ``flush`` returns once every output sent since the last
    flush is acknowledged, and raises if any was not."""

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None: ...

    async def flush(self) -> None: ...


class KafkaPublisher:
    """The kit's idempotent producer (acks=all) behind the Publisher protocol: the outputs sent
    since the last flush are one ``kafka.Deliveries``, settled by the flush."""

    def __init__(self, producer: kafka.KafkaProducer, *, timeout_s: float = 120.0) -> None:
        self.producer = producer
        self._timeout_s = timeout_s
        self._deliveries = kafka.Deliveries()

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        self._deliveries.expect(topic)
        self.producer.produce(topic, value, key, headers, self._deliveries.on_delivery)

    def _settle(self, deliveries: kafka.Deliveries) -> None:
        deliveries.seal()
        self.producer.flush(self._timeout_s)  # raises DeliveryError if messages are still queued
        # flush() returns once librdkafka has handed every report over; its callback may still
        # be running on the poll thread.
        if not deliveries.done.wait(self._timeout_s):
            raise kafka.DeliveryError(KafkaError(KafkaError._TIMED_OUT, "outputs left unacknowledged"))
        deliveries.raise_on_failure()

    async def flush(self) -> None:
        # Swapped on the thread that sends: a send after this belongs to the next flush.
        deliveries, self._deliveries = self._deliveries, kafka.Deliveries()
        await asyncio.get_running_loop().run_in_executor(None, self._settle, deliveries)


class TransactionsAgent:
    """Clean transactions -> feature processor -> feature vectors; poison -> dead letters."""

    def __init__(
        self,
        processor: FeatureProcessor,
        publisher: Publisher,
        *,
        vectors_topic: str,
        dead_letter_topic: str,
        source_name: str,
        batch_max: int = 500,
        batch_within_s: float = 0.02,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        service: str = "features",
        group: str = "driftline-features",
        outages: OutagePolicy | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._processor = processor
        self._feature_set: FeatureSet = processor.feature_set
        self._publisher = publisher
        self._vectors = vectors_topic
        self._dead_letters = dead_letter_topic
        self._source_name = source_name
        self._batch_max = batch_max
        self._within = batch_within_s
        self._max_retries = max_retries
        self._backoff = retry_backoff_s
        #: Redis (the online store and the stream's state) down: the batch waits, un-acked,
        #: for as long as the outage lasts, instead of its events being dead-lettered.
        self._outages = outages or OutagePolicy(errors=REDIS_OUTAGE)
        self._service = service.encode()
        #: The consumer group (faust's app id), under which the kit's consumed and dead-lettered
        #: counters count this agent, like every ``ConsumerLoop``: the dead-letter-ratio alert
        #: covers the features pipeline too.
        self._group = group
        #: Told when a batch fails (its outputs unacknowledged), and the agent ends: left to
        #: itself, faust restarts a failed agent, which reads on past the batch. That batch stays
        #: un-acked, so its partition's commits stop there while its vectors were never published
        #: (the offline store misses them) until some later restart replays it. The app exits
        #: instead, and whatever supervises it restarts it into the replay.
        self._on_failure = on_failure
        self._consumed = kafka.CONSUMED.labels(group, source_name)
        self._encoder = VectorEncoder(self._feature_set)
        #: The consumer's name in logs and in ``driftline_outage_waits_total``.
        self._agent = f"{service}.transactions"
        self.batches = 0

    async def __call__(self, stream: Stream) -> None:
        async for batch in stream.noack_take(self._batch_max, within=self._within):
            events: Sequence[EventT] = batch  # noack_take yields the events themselves
            try:
                await self.handle(events)
            except Exception as err:
                log.error("features_batch_failed", events=len(events), error=f"{type(err).__name__}: {err}")
                if self._on_failure is None:
                    raise
                self._on_failure(err)  # the app's exits the process at once
                return
            for event in events:
                await stream.ack(event)

    async def handle(self, batch: Sequence[EventT]) -> None:
        """Process a batch until every event's effect is durable; never raises on bad input.

        Raises only when the broker does not acknowledge outputs: the worker then stops
        (``on_failure``) with the batch un-acked, and a restart replays it (its effects are
        idempotent). Acking events whose outputs were lost is the one thing not to do.
        """
        started = time.perf_counter()
        label = self._feature_set.key
        decoded: list[tuple[EventT, Event]] = []
        dead: list[str] = []  # reasons, counted once the broker has the records
        for item in batch:
            try:
                decoded.append((item, decode_transaction(item.message.value)))
            except PoisonEvent as err:
                dead.append(self._dead_letter(item, err.reason, err.detail))
        vectors = 0
        send, encode, topic = self._publisher.send, self._encoder.encode, self._vectors
        for item, outcome in await self._process(decoded):
            if isinstance(outcome, PoisonEvent):
                dead.append(self._dead_letter(item, outcome.reason, outcome.detail))
            elif outcome.computed is not None:
                vectors += 1
                entity_id = outcome.event.entity_id
                send(topic, encode(entity_id, outcome.computed), entity_id.encode())
        if dead or vectors:
            await self._publisher.flush()
        # Counted only now, as ConsumerLoop books its batches: a batch that failed above is
        # replayed, and would otherwise count twice.
        self._consumed.inc(len(batch))
        for reason in dead:
            metrics.DEAD_LETTERED.labels(reason).inc()
            kafka.DEAD_LETTERED.labels(self._group, self._source_name, reason).inc()
        metrics.VECTORS.labels(label).inc(vectors)
        metrics.BATCH_SECONDS.labels(label).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(label).observe(len(batch))
        self.batches += 1

    async def _process(
        self, decoded: list[tuple[EventT, Event]]
    ) -> list[tuple[EventT, Processed | PoisonEvent]]:
        if not decoded:
            return []
        attempt = outage = 0
        while True:
            try:
                results = await self._processor.process([e for _, e in decoded])
                return [(item, r) for (item, _), r in zip(decoded, results, strict=True)]
            except Exception as err:  # an outage is waited out; anything else is retried,
                if self._outages.is_outage(err):  # then isolated and dead-lettered
                    # The batch waits, un-acked; cancelling the agent at shutdown ends the wait.
                    outage += 1
                    await asyncio.sleep(self._outages.hold(self._agent, outage, err, events=len(decoded)))
                    continue
                attempt += 1
                if attempt > self._max_retries:
                    if len(decoded) > 1:
                        # Isolate the culprit: each event alone; only those that still fail are poison.
                        isolated = []
                        for pair in decoded:
                            isolated += await self._process([pair])
                        return isolated
                    log.exception("event_failed", event_id=decoded[0][1].event_id, attempts=attempt)
                    return [(decoded[0][0], PoisonEvent("handler_error", f"{type(err).__name__}: {err}"))]
                metrics.RETRIES.inc()
                log.warning("batch_retry", attempt=attempt, events=len(decoded), error=str(err))
                await asyncio.sleep(self._backoff * attempt)

    def _dead_letter(self, item: EventT, reason: str, detail: str) -> str:
        """Send the event to the dead-letter topic (the caller flushes); returns the reason."""
        message = item.message
        log.info(
            "dead_lettered",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
        )
        headers = _headers(message.headers)
        headers += [
            (kafka.DLQ_REASON, reason.encode()),
            (kafka.DLQ_DETAIL, detail[:2000].encode("utf-8", "replace")),
            (kafka.DLQ_SOURCE_TOPIC, self._source_name.encode()),
            (kafka.DLQ_SOURCE_PARTITION, str(message.partition).encode()),
            (kafka.DLQ_SOURCE_OFFSET, str(message.offset).encode()),
            (kafka.DLQ_SOURCE_TIMESTAMP, str(round((message.timestamp or 0) * 1000)).encode()),
            (kafka.DLQ_SERVICE, self._service),
        ]
        self._publisher.send(self._dead_letters, message.value or b"", message.key, headers)
        return reason


class VectorsSinkAgent:
    """Feature vectors -> offline store; events are acked only once their rows are on disk.

    A batch is up to ``flush_s`` of vectors (thousands): they are decoded in chunks with the
    event loop let go in between, so the transactions agent is never held up for long (decoding
    5,000 vectors in one go held it ~150 ms: the worst freshness outliers at 1k events/s).
    """

    CHUNK = 500

    def __init__(self, sink: OfflineSink, *, batch_max: int = 20_000, flush_s: float = 5.0) -> None:
        self._sink = sink
        self._batch_max = batch_max
        self._flush_s = flush_s

    async def __call__(self, stream: Stream) -> None:
        async for batch in stream.noack_take(self._batch_max, within=self._flush_s):
            events: Sequence[EventT] = batch
            done = await self.handle(events)
            for event in done:
                await stream.ack(event)

    async def handle(self, batch: Sequence[EventT]) -> list[EventT]:
        """Queue the batch's rows and flush; returns the events whose rows are now durable."""
        feature_set = self._sink.store.feature_set
        for start in range(0, len(batch), self.CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = batch[start : start + self.CHUNK]
            self._sink.add_many([(item, event_row(item, feature_set)) for item in chunk])
        return await asyncio.get_running_loop().run_in_executor(None, self._sink.flush)


def event_row(event: EventT, feature_set: FeatureSet) -> FeatureRow | Malformed | None:
    """The offline row of a vectors event; None for another feature set."""
    try:
        return vector_row(event.message.value, feature_set)
    except ValueError as err:
        message = event.message
        return Malformed(message.topic, message.partition, message.offset, str(err))


def vector_row(payload: bytes | None, feature_set: FeatureSet) -> FeatureRow | None:
    """The offline row of a published vector; None for another feature set, ValueError for a
    malformed one."""
    if payload is None:
        raise ValueError("no value")
    vector = decode(features_pb2.FeatureVector, payload)
    if not vector.feature_set:
        raise ValueError("no feature set name")
    if vector.feature_set != feature_set.name or vector.feature_set_version != feature_set.version:
        return None
    if [v.name for v in vector.values] != feature_set.feature_names:
        raise ValueError(f"features {[v.name for v in vector.values]} are not {feature_set.feature_names}")
    if not vector.HasField("event_time"):
        raise ValueError("no event_time")
    return FeatureRow(
        entity_id=vector.entity_id,
        event_id=vector.event_id,
        event_time=epoch_seconds(vector.event_time),
        values=[v.value for v in vector.values],
    )
