"""The consumer loop: consume, handle, deliver, then commit (at-least-once, dead-lettering)."""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from driftline.kit.kafka.librdkafka import LIBRDKAFKA_LOG
from driftline.kit.kafka.messages import (
    DLQ_DETAIL,
    DLQ_REASON,
    DLQ_SERVICE,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TIMESTAMP,
    DLQ_SOURCE_TOPIC,
    BatchHandler,
    DeadLetter,
    Headers,
    Outcome,
)
from driftline.kit.kafka.producer import Deliveries, DeliveryError, KafkaProducer
from driftline.kit.outages import OutagePolicy
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import Topic

log = structlog.get_logger(__name__)
#: Lag is read from the client's cached watermarks at most this often.
_LAG_REPORT_INTERVAL_S = 1.0

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


class _Outage(Exception):
    """A handler failed because a dependency is down (the cause); the batch is not at fault."""


class _Abandoned(Exception):
    """A handler failed (the cause) once the loop was stopping: the batch is not retried, nor
    judged, but left uncommitted for the next run (a transient failure is not the batch's fault)."""


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
            **settings.connection(),
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
