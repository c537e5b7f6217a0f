"""The idempotent producer whose sends are acknowledged or reported, never lost silently."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter

from driftline.kit.kafka.librdkafka import LIBRDKAFKA_LOG
from driftline.kit.kafka.messages import Headers
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import Topic

#: Which deliveries a producer reports: every one, or only the failed ones (see KafkaProducer).
DeliveryReports = Literal["all", "errors"]

PRODUCED = Counter("driftline_kafka_produced_total", "Messages acknowledged by the broker.", ["topic"])
DELIVERY_FAILURES = Counter(
    "driftline_kafka_delivery_failures_total", "Messages the broker did not acknowledge.", ["topic"]
)


class DeliveryError(KafkaException):
    """The broker did not acknowledge a message."""


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The librdkafka properties of every producer of the platform: the connection's
    (``KafkaSettings.connection``), idempotent, ``acks=all``, lz4. Plain values only, so a
    producer outside Python (inference's data plane) gets the same ones."""
    return {
        **settings.connection(),
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
