"""Prediction log: every prediction goes to the predictions topic without blocking the response.

``log`` only appends to a bounded buffer (a lock and a deque append). A background thread
encodes the records as ``PredictionLog`` and hands them to the idempotent Kafka producer. When
the buffer is full (broker slow or down for long), records are dropped and counted in
``driftline_inference_prediction_log_dropped_total{reason="buffer_full"}``; a record the broker
never acknowledged is counted with ``reason="delivery_failed"``. Both are alerted on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import structlog

from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import to_timestamp
from driftline.kit.topics import Topic
from driftline.services.inference import metrics
from driftline.services.inference.predictor import PredictionResult

log = structlog.get_logger(__name__)


class Producer(Protocol):
    """``driftline.kit.kafka.KafkaProducer``, as the logger uses it."""

    def send(self, topic: Topic | str, value: bytes, key: bytes | str | None = None) -> Future[Any]: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


def encode(result: PredictionResult) -> bytes:
    record = inference_pb2.PredictionLog(
        prediction_id=result.prediction_id,
        entity_id=result.entity_id,
        event_id=result.event_id,
        model_name=result.model_name,
        model_version=result.model_version,
        score=result.score,
        label=result.label,
        feature_names=[f.name for f in result.features],
        feature_values=[f.value for f in result.features],
        predicted_at=to_timestamp(result.predicted_at),
        role=result.served_by.value,
    )
    return record.SerializeToString()


class PredictionLogger:
    """Bounded, non-blocking buffer in front of a background Kafka sender."""

    def __init__(
        self,
        producer: Producer,
        topic: Topic,
        *,
        capacity: int = 10_000,
        batch: int = 500,
        flush_interval_s: float = 0.005,
        encoder: Callable[[PredictionResult], bytes] = encode,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._capacity = capacity
        self._batch = batch
        self._flush_interval_s = flush_interval_s
        self._encode = encoder
        self._buffer: deque[PredictionResult] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._send_forever, name="prediction-log", daemon=True)
        self.sent = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def log(self, result: PredictionResult) -> None:
        """Buffer one record; drop it (counted) when the buffer is full. Never blocks on I/O."""
        with self._cond:
            if len(self._buffer) >= self._capacity or self._stopping:
                self.dropped += 1
                metrics.PREDICTION_LOG_DROPPED.labels("buffer_full").inc()
                return
            self._buffer.append(result)
            if len(self._buffer) in (1, self._batch):
                self._cond.notify()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _take(self) -> list[PredictionResult]:
        # The sender wakes every flush interval (or when a full batch waits) and sends in bulk:
        # waking once per record would bounce the GIL between it and the event loop per call.
        with self._cond:
            while not self._buffer and not self._stopping:
                self._cond.wait(0.5)
            if len(self._buffer) < self._batch and not self._stopping:
                self._cond.wait(self._flush_interval_s)
            count = min(self._batch, len(self._buffer))
            taken = [self._buffer.popleft() for _ in range(count)]
        metrics.PREDICTION_LOG_BUFFERED.set(len(self._buffer))
        return taken

    def _send_forever(self) -> None:
        while True:
            records = self._take()
            if not records:
                if self._stopping:
                    return
                continue
            for result in records:
                try:
                    future = self._producer.send(self._topic, self._encode(result), key=result.entity_id)
                except Exception as err:  # noqa: BLE001 - a bad record must not stop the sender
                    self._delivery_failed(err)
                    continue
                future.add_done_callback(self._on_delivery)
            self.sent += len(records)

    def _on_delivery(self, future: Future[Any]) -> None:
        err = future.exception()
        if err is not None:
            self._delivery_failed(err)

    def _delivery_failed(self, err: BaseException) -> None:
        self.dropped += 1
        metrics.PREDICTION_LOG_DROPPED.labels("delivery_failed").inc()
        log.warning("prediction_log_delivery_failed", error=str(err))

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is buffered, wait for the broker's acknowledgements (at most ``timeout_s``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        try:
            self._producer.flush(timeout_s)
        except Exception as err:  # noqa: BLE001 - counted already per message by the callbacks
            log.warning("prediction_log_flush_incomplete", error=str(err))
