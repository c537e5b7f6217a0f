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
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeVar, cast

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage
from prometheus_client import Counter, Gauge, Histogram

from driftline.kit.codec import decode
from driftline.kit.outages import OutagePolicy
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import Topic

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

log = structlog.get_logger(__name__)
#: Where every client's librdkafka log lines go (the ``logger`` client setting): through the
#: standard library, so ``configure_logging`` renders them as JSON like the rest, rather than
#: librdkafka printing its own ``%3|...|FAIL|`` lines to stderr.
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

M = TypeVar("M", bound=ProtoMessage)

Headers = list[tuple[str, bytes]]
#: Which deliveries a producer reports: every one, or only the failed ones (see KafkaProducer).
DeliveryReports = Literal["all", "errors"]
#: Lag is read from the client's cached watermarks at most this often.
_LAG_REPORT_INTERVAL_S = 1.0

# Header names on dead-letter records (the same names Kafka Connect users look for, namespaced).
DLQ_REASON = "dlq.reason"
DLQ_DETAIL = "dlq.detail"
DLQ_SOURCE_TOPIC = "dlq.source.topic"
DLQ_SOURCE_PARTITION = "dlq.source.partition"
DLQ_SOURCE_OFFSET = "dlq.source.offset"
DLQ_SOURCE_TIMESTAMP = "dlq.source.timestamp"
DLQ_SERVICE = "dlq.service"
CONTENT_TYPE = "content-type"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

CONSUMED = Counter("driftline_kafka_consumed_total", "Messages consumed.", ["group", "topic"])
DEAD_LETTERED = Counter(
    "driftline_kafka_dead_lettered_total",
    "Messages sent to a dead-letter topic.",
    ["group", "topic", "reason"],
)
SKIPPED = Counter(
    "driftline_kafka_skipped_total",
    "Unprocessable messages of topics without a dead-letter topic, left on their topic.",
    ["group", "topic", "reason"],
)
PRODUCED = Counter("driftline_kafka_produced_total", "Messages acknowledged by the broker.", ["topic"])
DELIVERY_FAILURES = Counter(
    "driftline_kafka_delivery_failures_total", "Messages the broker did not acknowledge.", ["topic"]
)
HANDLER_RETRIES = Counter(
    "driftline_kafka_handler_retries_total", "Batches retried after a transient error.", ["group"]
)
HANDED_BACK = Counter(
    "driftline_kafka_handed_back_total",
    "Messages of failing batches that isolation did not reach within its time budget, to be consumed again.",
    ["group"],
)
CONSUMER_LAG = Gauge(
    "driftline_kafka_consumer_lag",
    "Messages between the committed position and the end of the partition.",
    ["group", "topic", "partition"],
)
BATCH_SECONDS = Histogram(
    "driftline_kafka_batch_seconds",
    "Time to handle, deliver and commit one batch.",
    ["group"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class DeliveryError(KafkaException):
    """The broker did not acknowledge a message."""


class _Outage(Exception):
    """A handler failed because a dependency is down (the cause); the batch is not at fault."""


class _Abandoned(Exception):
    """A handler failed (the cause) once the loop was stopping: the batch is not retried, nor
    judged, but left uncommitted for the next run (a transient failure is not the batch's fault)."""


class Output(NamedTuple):
    """One message a handler wants sent (a tuple: handlers build one per event)."""

    topic: str
    value: bytes
    key: bytes | str | None = None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True)
class DeadLetter:
    """A handler's verdict that a message is poison: it goes to the dead-letter topic."""

    reason: str
    detail: str = ""


Outcome = Sequence[Output] | DeadLetter


class PoisonMessage(Exception):
    """Raised by a per-message handler for input that will never succeed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BatchHandler(Protocol):
    """Turns a batch of consumed messages into one outcome per message, in order.

    A handler may also have ``prepare(messages)``: the loop then calls it with the next batch
    when that batch is already consumed, once the current batch is handled and before its
    outputs are produced, and calls the handler with that batch afterwards (or drops it
    unprepared, to consume it again, when the current batch is held back or a failing one is
    handed back in part). ``prepare`` starts what the handler waits for (requests to
    another server), so that it runs while the loop produces; it must have no effect a fresh
    call would not repeat, since the handler may instead be called on the batch, or on a part
    of it, without it. What it raises is ignored: the handler meets it again.
    """

    def __call__(self, messages: Sequence[Message]) -> Sequence[Outcome]: ...


def per_message(handler: Callable[[Message], Iterable[Output]]) -> BatchHandler:
    """Adapt a one-message handler; ``PoisonMessage`` becomes a ``DeadLetter`` outcome."""

    def handle(messages: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for message in messages:
            try:
                outcomes.append(list(handler(message)))
            except PoisonMessage as err:
                outcomes.append(DeadLetter(err.reason, err.detail))
        return outcomes

    return handle


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The librdkafka properties of every producer of the platform: idempotent, ``acks=all``,
    lz4. Plain values only, so a producer outside Python (inference's data plane) gets the
    same ones."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "enable.idempotence": True,
        "acks": "all",
        "delivery.timeout.ms": settings.delivery_timeout_ms,
        "linger.ms": 5,
        "compression.type": "lz4",
    }


class KafkaProducer:
    """An idempotent producer whose sends are acknowledged or reported, never lost silently.

    ``reports="errors"`` asks the client for the failed deliveries' reports only: no Python
    callback per acknowledged message, on the poll thread, under the GIL (a sixth of the CPU of
    producing a small message: ``bench/kafka_reports.py``). Its user learns that everything
    produced so far is acknowledged, or its failures reported, when ``outstanding()`` falls to
    zero or ``flush`` returns; ``send`` (a future per message) needs every report and refuses.
    A consumer loop given such a producer for itself alone completes its batches that way (see
    ``ConsumerLoop``).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        transactional_id: str | None = None,
        config: dict[str, Any] | None = None,
        reports: DeliveryReports = "all",
    ) -> None:
        conf: dict[str, Any] = {**producer_config(settings), "logger": LIBRDKAFKA_LOG}
        if transactional_id:
            conf["transactional.id"] = transactional_id
        if reports == "errors":
            conf["delivery.report.only.error"] = True
        conf.update(config or {})
        self.reports: DeliveryReports = reports
        self._producer = Producer(conf)
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send(
        self,
        topic: Topic | str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
    ) -> concurrent.futures.Future[Message]:
        """Queue one message; the future resolves on acknowledgement or fails with DeliveryError."""
        if self.reports != "all":
            raise TypeError("send() needs every delivery report; this producer reports errors only")
        name = topic if isinstance(topic, str) else topic.name
        future: concurrent.futures.Future[Message] = concurrent.futures.Future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                DELIVERY_FAILURES.labels(name).inc()
                future.set_exception(DeliveryError(err))
            else:
                PRODUCED.labels(name).inc()
                future.set_result(msg)

        self.produce(name, value, key, headers, on_delivery)
        return future

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None,
        headers: Sequence[tuple[str, bytes]] | None,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        """Queue one message with a raw delivery callback (the hot path of the consumer loop).

        A ``str`` key is sent UTF-8 encoded (the client encodes it).
        """
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers or None, on_delivery=on_delivery)  # type: ignore[arg-type]
                return
            except BufferError:
                # Local queue full: let deliveries drain, then try again (back-pressure, not loss).
                self._producer.poll(0.1)

    async def send_async(
        self,
        topic: Topic | str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
    ) -> Message:
        """Send and await the broker's acknowledgement from asyncio code."""
        return await asyncio.wrap_future(self.send(topic, value, key, headers))

    def outstanding(self) -> int:
        """Messages produced and not yet acknowledged or reported failed (their reports served)."""
        return len(self._producer)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued message is acknowledged; raise if any is still pending."""
        remaining = self._producer.flush(timeout_s if timeout_s is not None else -1)
        if remaining:
            raise DeliveryError(KafkaError(KafkaError._TIMED_OUT, f"{remaining} messages not delivered"))

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self.flush(timeout_s)
        finally:
            self._stop.set()
            self._poller.join(timeout=2)

    @property
    def raw(self) -> Producer:
        """The confluent-kafka producer, for transactions."""
        return self._producer


def wait_all(futures: Iterable[concurrent.futures.Future[Message]], timeout_s: float) -> None:
    """Block until every future is acknowledged; raise the first delivery failure."""
    for future in futures:
        future.result(timeout=timeout_s)


class Deliveries:
    """A set of produced messages whose acknowledgements are awaited together.

    ``expect`` counts each message as it is produced, with ``on_delivery`` as its callback (it
    runs on the producer's poll thread); after ``seal`` the last acknowledgement sets ``done``.
    ``raise_on_failure`` then books the producer metrics and raises the first failure. One
    callback and a counter, not a future per message (a future costs a lock and a condition).
    """

    __slots__ = ("_lock", "_sealed", "_settled", "_total", "done", "expected", "failures")

    def __init__(self) -> None:
        self.expected: dict[str, int] = {}
        self.failures: list[tuple[str, KafkaError]] = []
        self.done = threading.Event()
        self._total = 0
        self._settled = 0
        self._sealed = False
        self._lock = threading.Lock()

    def expect(self, topic: str) -> None:
        """Count one output about to be produced (the producing thread, before ``seal``)."""
        self.expected[topic] = self.expected.get(topic, 0) + 1
        self._total += 1

    def expect_many(self, counts: Mapping[str, int]) -> None:
        """Count outputs already produced, by topic (the producing thread, before ``seal``;
        acknowledgements that arrived first are settled already, and ``seal`` compares)."""
        for topic, n in counts.items():
            self.expected[topic] = self.expected.get(topic, 0) + n
            self._total += n

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is not None:
                self.failures.append((cast(str, msg.topic()), err))
            self._settled += 1
            if self._sealed and self._settled == self._total:
                self.done.set()

    def seal(self) -> None:
        """Every output is produced: from now on the last acknowledgement completes the set."""
        with self._lock:
            self._sealed = True
            if self._settled == self._total:
                self.done.set()

    def raise_on_failure(self) -> None:
        """Book what was produced and what failed, per topic; raise the first failure."""
        failed: dict[str, int] = {}
        for topic, _ in self.failures:
            failed[topic] = failed.get(topic, 0) + 1
            DELIVERY_FAILURES.labels(topic).inc()
        for topic, n in self.expected.items():
            if n - failed.get(topic, 0):
                PRODUCED.labels(topic).inc(n - failed.get(topic, 0))
        if self.failures:
            _, err = self.failures[0]
            raise DeliveryError(err)


class _InFlight(Deliveries):
    """One handled batch whose outputs are on their way."""

    __slots__ = ("batch", "dead_lettered", "started")

    def __init__(self, batch: list[Message], started: float) -> None:
        super().__init__()
        self.batch = batch
        self.started = started
        #: Messages of the batch sent to a dead-letter topic, by source topic and reason.
        self.dead_lettered: dict[tuple[str, str], int] = {}


@dataclass
class ConsumerHooks:
    """Test seams. ``before_commit`` runs after outputs are acknowledged, before the commit."""

    before_commit: Callable[[Sequence[Message]], None] | None = None


class ConsumerLoop:
    """Consume, handle, deliver, then commit: at-least-once with dead-lettering.

    Handling is pipelined with delivery: batch N+1 is handled while batch N's outputs are in
    flight, up to ``max_in_flight_batches``; offsets are committed per batch, in order, once its
    outputs are acknowledged (asynchronously: a lost commit only means a replay). With a
    producer of its own that reports failed deliveries only (``KafkaProducer(reports="errors")``)
    the loop counts no acknowledgements: the batches in flight are done together when the
    producer has no output outstanding, which the loop checks once a batch is handled, before
    producing its outputs (the earlier batches' acknowledgements usually arrived meanwhile), and
    which a flush waits for when ``max_in_flight_batches`` are in flight. When the loop
    is idle, on a rebalance and on stop, every batch in flight is drained and committed first.
    The loop stops after the batches in flight when ``stop()`` is called or SIGTERM arrives
    (see ``install_signal_handlers``), commits what it delivered, and leaves the group.

    A handler with ``prepare`` (see ``BatchHandler``) is given the next batch to prepare when
    that batch is already there: after a batch is consumed the loop looks for the next without
    waiting, and handles the first (prepares the second, produces the first's outputs) only
    then; with none there, it handles the batch at once, so a slow stream waits for nothing.

    A handler failure that ``outages`` calls an outage (a dependency down) holds the batch back:
    its partitions are rewound to it, nothing of it is produced or committed, and it is consumed
    and handled again after a back-off, for as long as the outage lasts (``driftline.kit.outages``).
    Any other failure is retried ``max_retries`` times, with a back-off, then each message of the
    batch is handled alone, once and without a back-off, and only the messages that fail alone are
    dead-lettered (``handler_error``). The batch had its retries: retrying each message with
    back-offs too would take the batch's size times as long and outlast ``max.poll.interval.ms``
    (the loop polls between batches only), and the group would take the partitions away. For the
    same reason nothing new starts on a failing batch once half of ``max.poll.interval.ms`` has
    passed (a try under way finishes): no retry whose back-off would end past it, no message
    isolated after it, and the messages isolation did not reach are consumed again
    (``batch_tail_handed_back``), each round at least one message further. A failure
    met once ``stop()`` is called, isolating or not, is neither retried nor dead-lettered: the batch
    is abandoned like a held-back one, nothing of it produced or committed, and the next run
    handles it (``batch_abandoned_at_stop``).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        topics: Sequence[Topic],
        handler: BatchHandler,
        producer: KafkaProducer,
        service: str = "",
        max_retries: int = 5,
        retry_backoff_s: float = 0.5,
        hooks: ConsumerHooks | None = None,
        config: dict[str, Any] | None = None,
        outages: OutagePolicy | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": settings.client_id,
            "logger": LIBRDKAFKA_LOG,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "isolation.level": "read_committed",
            "statistics.interval.ms": 5000,
            "stats_cb": lambda _stats: None,
            "on_commit": self._on_commit,
        }
        conf.update(config or {})
        self._settings = settings
        self._group = group_id
        self._topics = {t.name: t for t in topics}
        self._handler = handler
        self._producer = producer
        self._service = service or group_id
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._hooks = hooks or ConsumerHooks()
        self._outages = outages or OutagePolicy()
        #: Consecutive attempts that met an outage (0: the last batch went through).
        self._outage_attempts = 0
        self._consumer = Consumer(conf)
        self._stopping = threading.Event()
        self._prepare: Callable[[Sequence[Message]], None] | None = getattr(handler, "prepare", None)
        #: A batch consumed, prepared and not handled yet: it waits for the next batch's poll.
        self._waiting: list[Message] | None = None
        self._in_flight: deque[_InFlight] = deque()
        #: The producer reports failures only: the batches in flight are done together, once the
        #: producer has nothing outstanding (see ``_settle``).
        self._settled_together = getattr(producer, "reports", "all") == "errors"
        #: Offsets (next to read) of every batch committed so far: the final commit repeats them.
        self._committed: dict[tuple[str, int], int] = {}
        self._lag_reported = 0.0
        self._broken = False
        self.batches = 0
        #: How long a failing batch may be retried and isolated before the messages it has not
        #: reached go back for a later poll: half of ``max.poll.interval.ms``, past which the group
        #: would take the partitions away (the loop polls between batches only).
        self._handling_budget_s = int(conf.get("max.poll.interval.ms", 300_000)) / 1000 / 2
        self._clock = time.perf_counter

    def stop(self) -> None:
        """Ask the loop to finish its batches in flight, commit and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Run until ``stop()``. Raises only when a batch cannot be delivered at all."""
        self._consumer.subscribe(list(self._topics), on_revoke=self._on_revoke)
        log.info("consumer_started", group=self._group, topics=list(self._topics))
        try:
            while not self._stopping.is_set():
                # A batch waiting to be handled waits for no more than what is already there.
                timeout = 0 if self._waiting else self._settings.poll_timeout_s
                messages = self._consumer.consume(num_messages=self._settings.batch_size, timeout=timeout)
                batch = [m for m in messages if not self._is_partition_event(m)]
                waiting, self._waiting = self._waiting, None
                if waiting:
                    if self._dispatch(waiting, then_prepare=batch) and batch:
                        self._waiting = batch
                    self._commit_completed(wait=False)
                elif batch and self._prepare is not None:
                    self._prepare_batch(batch)
                    self._waiting = batch
                elif batch:
                    self._dispatch(batch)
                    self._commit_completed(wait=False)
                else:
                    self._drain()
                self._report_lag()
            self._dispatch_waiting()
            self._drain()
            if self._committed:
                # Asynchronous commits may still be on their way: make the last position durable.
                self._consumer.commit(offsets=self._offsets(self._committed), asynchronous=False)
                self._committed.clear()
        except BaseException:
            # Nothing after a failed batch may be committed, not even by the revocation on close:
            # committing a later batch's offsets would skip the failed one's messages.
            self._broken = True
            self._in_flight.clear()
            self._waiting = None
            raise
        finally:
            self._consumer.close()
            log.info("consumer_stopped", group=self._group, batches=self.batches)

    def _is_partition_event(self, message: Message) -> bool:
        err = message.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer_error", group=self._group, error=str(err))
        return True

    def _process(self, batch: list[Message]) -> None:
        """Handle one batch and wait until it is delivered and committed (no pipelining)."""
        self._dispatch(batch)
        self._drain()

    def _dispatch(self, batch: list[Message], then_prepare: list[Message] | None = None) -> bool:
        """Handle a batch and produce its outputs; it joins the batches in flight. The handler
        prepares ``then_prepare`` in between. False: ``then_prepare`` was handed back (rewound),
        with the whole batch (held back, not handled) or with the tail of it that isolation did
        not reach in time."""
        started = self._clock()
        try:
            outcomes = self._handle_with_retries(batch, started)
        except _Outage as outage:
            self._hold_back(batch + (then_prepare or []), outage.__cause__)
            return False
        except _Abandoned as abandoned:
            cause = abandoned.__cause__ or abandoned
            log.warning(
                "batch_abandoned_at_stop",
                group=self._group,
                messages=len(batch),
                error=f"{type(cause).__name__}: {cause}",
            )
            self._rewind(batch + (then_prepare or []))
            return False
        self._outage_attempts = 0
        handed_back = len(outcomes) < len(batch)
        if handed_back:
            # Isolation ran out of time: what it reached goes out and is committed, the rest is
            # consumed again (a later message of a partition never commits before an earlier one).
            HANDED_BACK.labels(self._group).inc(len(batch) - len(outcomes))
            log.warning(
                "batch_tail_handed_back",
                group=self._group,
                handled=len(outcomes),
                handed_back=len(batch) - len(outcomes),
                budget_s=self._handling_budget_s,
            )
            self._rewind(batch[len(outcomes) :] + (then_prepare or []))
            batch, then_prepare = batch[: len(outcomes)], None
        flight = _InFlight(batch, started)
        if then_prepare:
            self._prepare_batch(then_prepare)
        if self._settled_together:
            # The earlier batches' outputs were on their way while this batch was handled: commit
            # them now if they all arrived, before this batch's outputs are outstanding too.
            self._commit_completed(wait=False)
        produce, on_delivery = self._producer.produce, flight.on_delivery
        log_each = _debug_enabled()  # once a batch: a filtered debug call costs microseconds
        # The hot loop of every consumer: outputs unpacked as tuples, counted in one go below.
        topics: list[str] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, DeadLetter):
                dead_letter = self._dead_letter(message, outcome, flight, log_each=log_each)
                if dead_letter is not None:
                    topics.append(dead_letter)
            else:
                for topic, value, key, headers in outcome:
                    topics.append(topic)
                    produce(topic, value, key, headers, on_delivery)
        flight.expect_many(collections.Counter(topics))
        flight.seal()
        self._in_flight.append(flight)
        while len(self._in_flight) > self._settings.max_in_flight_batches:
            if self._settled_together:
                self._drain()
            else:
                self._complete(self._in_flight[0], wait=True)
        return not handed_back

    def _prepare_batch(self, batch: list[Message]) -> None:
        assert self._prepare is not None
        try:
            self._prepare(batch)
        except Exception as err:  # noqa: BLE001 - the handler meets it again when it handles the batch
            log.debug("prepare_failed", group=self._group, error=str(err))

    def _dispatch_waiting(self) -> None:
        """Handle the batch waiting for the next one's poll, if any (stop, rebalance)."""
        waiting, self._waiting = self._waiting, None
        if waiting:
            self._dispatch(waiting)

    def _hold_back(self, batch: list[Message], err: BaseException | None) -> None:
        """A dependency is down: rewind the batch's partitions to it, so that it is consumed
        and handled again, and wait out the back-off (``stop()`` cuts the wait short)."""
        self._rewind(batch)
        self._outage_attempts += 1
        self._stopping.wait(self._outages.hold(self._group, self._outage_attempts, err, messages=len(batch)))

    def _rewind(self, batch: list[Message]) -> None:
        """Seek the batch's partitions back to it; nothing of it is in flight, so neither it nor
        what follows it on those partitions is committed. The batch may span two consumed
        batches: each partition goes back to its first message."""
        first: dict[tuple[str, int], int] = {}
        for message in batch:
            first.setdefault(
                (cast(str, message.topic()), cast(int, message.partition())), cast(int, message.offset())
            )
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def _commit_completed(self, *, wait: bool) -> None:
        """Commit the batches in flight, oldest first, that are fully acknowledged."""
        self._settle()
        while self._in_flight and (wait or self._in_flight[0].done.is_set()):
            self._complete(self._in_flight[0], wait=wait)

    def _drain(self) -> None:
        """Send everything queued now (no linger), then commit every batch in flight."""
        if self._in_flight:
            # Commit only what the broker has acknowledged; a failure leaves offsets uncommitted.
            self._producer.flush(self._settings.delivery_timeout_ms / 1000)
            self._commit_completed(wait=True)

    def _settle(self) -> None:
        """With a producer that reports failures only: when it has no output outstanding, every
        batch in flight is done (each failure was reported to its batch before the count fell)."""
        if self._settled_together and self._in_flight and not self._producer.outstanding():
            for flight in self._in_flight:
                flight.done.set()

    def _complete(self, flight: _InFlight, *, wait: bool) -> None:
        if wait and not flight.done.wait(self._settings.delivery_timeout_ms / 1000):
            raise DeliveryError(KafkaError(KafkaError._TIMED_OUT, "a batch's outputs were not acknowledged"))
        self._in_flight.popleft()
        flight.raise_on_failure()
        # The last offset of each partition (a partition's messages come in offset order).
        offsets: dict[Any, Any] = {}
        for message in flight.batch:
            offsets[(message.topic(), message.partition())] = message.offset()
        last: dict[tuple[str, int], int] = {position: offset + 1 for position, offset in offsets.items()}
        if len(self._topics) == 1:
            CONSUMED.labels(self._group, next(iter(self._topics))).inc(len(flight.batch))
        else:
            for topic, n in collections.Counter(message.topic() for message in flight.batch).items():
                CONSUMED.labels(self._group, topic).inc(n)
        if flight.dead_lettered:
            reasons: dict[str, int] = {}
            for (topic, reason), n in flight.dead_lettered.items():
                DEAD_LETTERED.labels(self._group, topic, reason).inc(n)
                reasons[reason] = reasons.get(reason, 0) + n
            log.info("dead_lettered", group=self._group, messages=len(flight.batch), reasons=reasons)
        if self._hooks.before_commit is not None:
            self._hooks.before_commit(flight.batch)
        self._consumer.commit(offsets=self._offsets(last), asynchronous=True)
        self._committed.update(last)
        self.batches += 1
        BATCH_SECONDS.labels(self._group).observe(time.perf_counter() - flight.started)

    @staticmethod
    def _offsets(positions: dict[tuple[str, int], int]) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in positions.items()]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before partitions move to another member: deliver and commit everything in flight."""
        for tp in partitions:
            # Their lag is the new owner's to report: a value left here would go stale, and the
            # recording rule takes each partition's highest report.
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(self._group, tp.topic, str(tp.partition))
        if self._broken:
            return
        self._dispatch_waiting()
        self._drain()
        if self._committed:
            try:
                consumer.commit(offsets=self._offsets(self._committed), asynchronous=False)
            except KafkaException as err:
                log.warning("commit_on_revoke_failed", group=self._group, error=str(err))
        self._committed.clear()

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            # At-least-once holds: the next commit or a replay covers these offsets.
            log.warning("commit_failed", group=self._group, error=str(err))

    def _handle_with_retries(self, batch: list[Message], started: float) -> Sequence[Outcome]:
        """The batch's outcomes: retried with a back-off, then isolated (see ``ConsumerLoop``).
        Raises ``_Outage`` or ``_Abandoned`` when the failure is not the batch's fault.

        Retries stop where the next back-off would end past the handling budget (counted from
        ``started``), and isolation stops before its next message once the budget is spent and
        one message was handled: the outcomes then cover a prefix of the batch, and the caller
        hands the rest back. A try under way always finishes: the budget is a point past which
        nothing new starts, not a limit on a slow try."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._handle(batch)
            except Exception as err:
                self._raise_unless_the_batchs_fault(err)
                backoff = self._retry_backoff_s * attempt
                if attempt > self._max_retries or self._clock() - started + backoff > self._handling_budget_s:
                    if len(batch) == 1:
                        log.exception("handler_failed", group=self._group, attempts=attempt)
                        return [DeadLetter("handler_error", f"{type(err).__name__}: {err}")]
                    break
                HANDLER_RETRIES.labels(self._group).inc()
                log.warning("handler_retry", group=self._group, attempt=attempt, error=str(err))
                self._stopping.wait(backoff)  # stop() cuts it short
        # Isolate the culprit: each message alone, once, dead-lettered only if it fails alone.
        outcomes: list[Outcome] = []
        for message in batch:
            if outcomes and self._clock() - started > self._handling_budget_s:
                break  # at least one message per batch: every round makes progress
            outcomes.extend(self._handle_alone(message))
        return outcomes

    def _handle_alone(self, message: Message) -> Sequence[Outcome]:
        if self._stopping.is_set():
            # The messages isolated so far go back with the rest: nothing of the batch is produced.
            raise _Abandoned("stopped while isolating a failed batch")
        try:
            return self._handle([message])
        except Exception as err:
            self._raise_unless_the_batchs_fault(err)
            log.exception(
                "handler_failed", group=self._group, partition=message.partition(), offset=message.offset()
            )
            return [DeadLetter("handler_error", f"{type(err).__name__}: {err}")]

    def _handle(self, batch: list[Message]) -> Sequence[Outcome]:
        outcomes = self._handler(batch)
        if len(outcomes) != len(batch):
            raise RuntimeError(f"handler returned {len(outcomes)} outcomes for {len(batch)} messages")
        return outcomes

    def _raise_unless_the_batchs_fault(self, err: Exception) -> None:
        """Neither a dependency's outage nor a failure at stop is the batch's fault: the batch is
        held back whole (``_hold_back``) or abandoned, never retried alone or dead-lettered."""
        if self._outages.is_outage(err):
            raise _Outage from err
        if self._stopping.is_set():
            raise _Abandoned from err

    def _dead_letter(
        self, message: Message, verdict: DeadLetter, flight: _InFlight, *, log_each: bool
    ) -> str | None:
        """Produce the message to its topic's dead-letter topic and return that topic's name;
        None when the topic declares no dead-letter topic (the message is counted and logged)."""
        source = self._topics[message.topic()]
        if source.dead_letter is None:
            # Topics written only by Driftline's own services declare no dead-letter topic: the
            # message stays on its topic (retention keeps it) and is counted and logged, not lost.
            SKIPPED.labels(self._group, source.name, verdict.reason).inc()
            log.error(
                "message_skipped",
                topic=source.name,
                partition=message.partition(),
                offset=message.offset(),
                reason=verdict.reason,
                detail=verdict.detail[:500],
            )
            return None
        _, timestamp = message.timestamp()
        headers: Headers = list(cast(Headers, message.headers() or []))
        headers += [
            (DLQ_REASON, verdict.reason.encode()),
            (DLQ_DETAIL, verdict.detail[:2000].encode("utf-8", "replace")),
            (DLQ_SOURCE_TOPIC, source.name.encode()),
            (DLQ_SOURCE_PARTITION, str(message.partition()).encode()),
            (DLQ_SOURCE_OFFSET, str(message.offset()).encode()),
            (DLQ_SOURCE_TIMESTAMP, str(timestamp).encode()),
            (DLQ_SERVICE, self._service.encode()),
        ]
        # Per message at debug only (``log_each``): a producer sending garbage must not flood the
        # logs. The record itself (reason and source coordinates in its headers) and the counter
        # by reason, booked once the batch is acknowledged, are the trail; the batch logs one
        # summary line.
        if log_each:
            log.debug(
                "dead_lettered",
                topic=source.name,
                partition=message.partition(),
                offset=message.offset(),
                reason=verdict.reason,
            )
        counted = (source.name, verdict.reason)
        flight.dead_lettered[counted] = flight.dead_lettered.get(counted, 0) + 1
        dead_letter = source.dead_letter_topic().name
        self._producer.produce(
            dead_letter, message.value() or b"", message.key(), headers, flight.on_delivery
        )
        return dead_letter

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_reported < _LAG_REPORT_INTERVAL_S:
            return
        self._lag_reported = now
        try:
            assignment = self._consumer.assignment()
            if not assignment:
                return
            positions = self._consumer.position(assignment)
        except KafkaException:
            return
        for tp in positions:
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0 or tp.offset < 0:
                continue
            CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(max(0, high - tp.offset))


def _debug_enabled() -> bool:
    """Whether this module's debug lines would be written (the level set by ``configure_logging``)."""
    enabled = getattr(log.bind(), "is_enabled_for", None)  # structlog's filtering loggers have it
    return True if enabled is None else bool(enabled(logging.DEBUG))


def install_signal_handlers(on_stop: Callable[[], None]) -> None:
    """Call ``on_stop`` on SIGTERM or SIGINT (from the main thread)."""

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        on_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def header(message: Message, name: str) -> bytes | None:
    """The last value of a header, or None."""
    found = None
    for key, value in cast(Headers, message.headers() or []):
        if key == name:
            found = value
    return found


def decode_value(message_type: type[M], message: Message) -> M:
    """A message's value as ``message_type``: protobuf, or its JSON form when the message's
    ``content-type`` header says ``application/json`` (producers outside Driftline often write
    JSON). Raises ValueError with the reason when it is neither."""
    payload = message.value() or b""
    if header(message, CONTENT_TYPE) == JSON.encode():
        try:
            return json_format.Parse(payload, message_type())
        except json_format.ParseError as err:
            raise ValueError(f"not a valid {message_type.DESCRIPTOR.full_name} in JSON: {err}") from err
    return decode(message_type, payload)


def admin_client(bootstrap_servers: str) -> AdminClient:
    """An admin client whose librdkafka lines go through ``LIBRDKAFKA_LOG`` like the others'.
    An admin client hands them over only when polled: call ``poll(0)`` after its requests, or
    they pile up in it unread."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": LIBRDKAFKA_LOG}
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


def offsets_reader(bootstrap_servers: str, group: str) -> Consumer:
    """A consumer of ``group`` that never subscribes, hence never joins the group: what
    ``committed_offsets`` reads a group's offsets with. Close it when done."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
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


def skip_to_end(bootstrap_servers: str, group: str, *, timeout_s: float = 30.0) -> int:
    """Move a consumer group to the end of every topic it has committed offsets on (all of each
    topic's partitions), so that it next consumes only what is produced from now on (what
    ``kafka-consumer-groups --reset-offsets --to-latest`` does). Returns how many partitions moved;
    a group with no committed offsets is left to its ``auto.offset.reset``.

    The group must have no active member (the broker refuses otherwise: ``KafkaException``).
    """
    admin = admin_client(bootstrap_servers)
    try:
        return _skip_to_end(admin, bootstrap_servers, group, timeout_s)
    finally:
        admin.poll(0)  # hand its log lines over


def _skip_to_end(admin: AdminClient, bootstrap_servers: str, group: str, timeout_s: float) -> int:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import OffsetSpec

    metadata = admin.list_topics(timeout=timeout_s).topics
    everywhere = [
        TopicPartition(t, p)
        for t, meta in metadata.items()
        if not t.startswith("__")
        for p in meta.partitions
    ]
    reader = offsets_reader(bootstrap_servers, group)
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
