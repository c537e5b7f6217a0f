"""The Kafka adapter: one batch handler over feature vectors, predictions, feedback and model events.

It decodes each message into a domain record, hands it to the core (monitor, joiner, tracker,
reference watcher) and turns what the core says into outputs: ``DriftReport`` messages on the
drift-report topic and ``PerformanceDegradation`` messages on the degradation topic, keyed by
model name. ``ConsumerLoop`` sends them and waits for their acknowledgement before it commits.

Bad input: a feedback label that cannot be decoded or joined goes to the feedback dead-letter
topic with a reason. The other three topics have no dead-letter topic; their bad messages are
counted (``driftline_drift_skipped_total``) and logged, and the loop goes on.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import structlog
from confluent_kafka import Message
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.drift.v1 import drift_pb2
from driftline.features.v1 import features_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import decode
from driftline.kit.kafka import (
    CONTENT_TYPE,
    PROTOBUF,
    DeadLetter,
    Outcome,
    Output,
    decode_value,
)
from driftline.kit.topics import (
    DRIFT_REPORTS,
    FEATURE_VECTORS,
    FEEDBACK,
    MODEL_EVENTS,
    PERFORMANCE_DEGRADATIONS,
    PREDICTIONS,
    Topic,
)
from driftline.registry.v1 import registry_pb2
from driftline.services.drift import metrics
from driftline.services.drift.errors import InvalidFeedback
from driftline.services.drift.feedback import FeedbackJoiner, LabelRecord, PredictionRecord
from driftline.services.drift.monitor import DriftMonitor, DriftReportData
from driftline.services.drift.performance import CHAMPION_ROLES, Degradation, PerformanceTracker
from driftline.services.drift.reference import ReferenceWatcher

log = structlog.get_logger(__name__)

_HEADERS = [(CONTENT_TYPE, PROTOBUF.encode())]
M = TypeVar("M", registry_pb2.ModelEvent, features_pb2.FeatureVector, inference_pb2.PredictionLog)


@dataclass(frozen=True)
class DriftTopics:
    """The topics the service reads and writes; tests pass ``namespaced`` copies."""

    feature_vectors: Topic = FEATURE_VECTORS
    predictions: Topic = PREDICTIONS
    feedback: Topic = FEEDBACK
    model_events: Topic = MODEL_EVENTS
    drift_reports: Topic = DRIFT_REPORTS
    degradations: Topic = PERFORMANCE_DEGRADATIONS

    @property
    def consumed(self) -> list[Topic]:
        return [self.model_events, self.feature_vectors, self.predictions, self.feedback]

    @property
    def all(self) -> list[Topic]:
        return [*self.consumed, self.drift_reports, self.degradations]

    def namespaced(self, prefix: str) -> DriftTopics:
        return DriftTopics(
            feature_vectors=self.feature_vectors.namespaced(prefix),
            predictions=self.predictions.namespaced(prefix),
            feedback=self.feedback.namespaced(prefix),
            model_events=self.model_events.namespaced(prefix),
            drift_reports=self.drift_reports.namespaced(prefix),
            degradations=self.degradations.namespaced(prefix),
        )


class _Skip(Exception):
    """A message of a topic without dead letters that is not used; ``reason`` is counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def _seconds(ts: Timestamp) -> float:
    """Epoch seconds of a protobuf timestamp; NaN when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return math.nan
    return ts.seconds + ts.nanos / 1e9


def _timestamp(seconds: float) -> Timestamp | None:
    if not math.isfinite(seconds):
        return None
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def _message_time(message: Message) -> float:
    _, ms = message.timestamp()
    return ms / 1000 if ms and ms > 0 else time.time()


def report_to_proto(report: DriftReportData) -> drift_pb2.DriftReport:
    message = drift_pb2.DriftReport(
        report_id=report.report_id,
        model_name=report.model_name,
        model_version=report.model_version,
        detector=report.detector,
        stream=report.stream,
        status=int(report.status),  # type: ignore[arg-type]
        window_size=report.window_size,
        events_seen=report.events_seen,
        reason=report.reason,
        features=[
            drift_pb2.FeatureDriftStat(
                feature=s.feature,
                statistic=s.statistic,
                p_value=s.p_value,
                threshold=s.threshold,
                drifted=s.drifted,
                test=s.test,
            )
            for s in report.features
        ],
    )
    for field_name, seconds in (
        ("window_start", report.window_start),
        ("window_end", report.window_end),
        ("detected_at", report.detected_at),
    ):
        ts = _timestamp(seconds)
        if ts is not None:
            getattr(message, field_name).CopyFrom(ts)
    return message


def degradation_to_proto(degradation: Degradation) -> drift_pb2.PerformanceDegradation:
    message = drift_pb2.PerformanceDegradation(
        event_id=degradation.event_id,
        model_name=degradation.model_name,
        model_version=degradation.model_version,
        metric=degradation.metric,
        value=degradation.value,
        threshold=degradation.threshold,
        labelled_count=degradation.labelled_count,
    )
    ts = _timestamp(degradation.detected_at)
    if ts is not None:
        message.detected_at.CopyFrom(ts)
    return message


def prediction_record(log_msg: inference_pb2.PredictionLog, fallback_time: float) -> PredictionRecord:
    predicted_at = _seconds(log_msg.predicted_at)
    return PredictionRecord(
        prediction_id=log_msg.prediction_id,
        entity_id=log_msg.entity_id,
        event_id=log_msg.event_id,
        model_name=log_msg.model_name,
        model_version=log_msg.model_version,
        score=log_msg.score,
        label=log_msg.label,
        predicted_at=predicted_at if math.isfinite(predicted_at) else fallback_time,
        role=log_msg.role,
    )


def label_record(label: feedback_pb2.FeedbackLabel) -> LabelRecord:
    return LabelRecord(
        feedback_id=label.feedback_id,
        label=label.label,
        prediction_id=label.prediction_id,
        entity_id=label.entity_id,
        event_id=label.event_id,
        label_time=_seconds(label.label_time),
    )


class DriftHandler:
    """``BatchHandler`` of the drift service's consumer loop."""

    def __init__(
        self,
        *,
        monitor: DriftMonitor,
        watcher: ReferenceWatcher,
        joiner: FeedbackJoiner,
        tracker: PerformanceTracker,
        topics: DriftTopics,
    ) -> None:
        self._monitor = monitor
        self._watcher = watcher
        self._joiner = joiner
        self._tracker = tracker
        self._topics = topics
        self._routes: dict[str, Callable[[Message], list[DriftReportData]]] = {
            topics.model_events.name: self._on_model_event,
            topics.feature_vectors.name: self._on_feature_vector,
            topics.predictions.name: self._on_prediction,
        }
        self._join_counts: Counter[str] = Counter()
        #: Outputs of a batch that had nothing but dead letters to carry them.
        self._deferred: list[Output] = []

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        pending = self._deferred + [self._report_output(r) for r in self._watcher.ensure_loaded()]
        self._deferred = []
        for message in messages:
            outcome = self._handle(message)
            if isinstance(outcome, DeadLetter):
                outcomes.append(outcome)
                continue
            outcomes.append(pending + outcome)
            pending = []
        return self._finish_batch(outcomes, pending)

    def _handle(self, message: Message) -> list[Output] | DeadLetter:
        topic = message.topic() or ""
        if topic == self._topics.feedback.name:
            try:
                return self._on_feedback(message)
            except Exception as err:  # one label must not stop the loop: it goes to dead letters
                log.exception("feedback_failed", offset=message.offset())
                return DeadLetter("error", f"{type(err).__name__}: {err}")
        try:
            reports = self._routes[topic](message)
        except _Skip as skip:
            metrics.SKIPPED.labels(topic, skip.reason).inc()
            log.debug("message_skipped", topic=topic, offset=message.offset(), reason=skip.reason)
            return []
        except Exception:  # no dead-letter topic here: counted and logged, the loop goes on
            metrics.SKIPPED.labels(topic, "error").inc()
            log.exception("message_failed", topic=topic, offset=message.offset())
            return []
        return [self._report_output(r) for r in reports]

    def _finish_batch(self, outcomes: list[Outcome], pending: list[Output]) -> list[Outcome]:
        """Expire the join state, evaluate performance; outputs ride on the last non-dead-letter."""
        self._joiner.expire()
        metrics.REFERENCE_VERSION.labels(self._watcher.model_name).set(self._monitor.version or 0)
        performances, degradations = self._tracker.evaluate()
        metrics.record_performance(performances)
        self._record_join_counts()
        extra = pending + [self._degradation_output(d) for d in degradations]
        if extra:
            for i in range(len(outcomes) - 1, -1, -1):
                outcome = outcomes[i]
                if not isinstance(outcome, DeadLetter):
                    outcomes[i] = [*outcome, *extra]
                    break
            else:
                # Only dead letters in this batch: the outputs ride on the next batch (a crash
                # before then loses them, as it loses the in-memory state they came from).
                self._deferred = extra
        return outcomes

    # -- routes ----------------------------------------------------------------------------
    def _on_model_event(self, message: Message) -> list[DriftReportData]:
        event = self._decode(registry_pb2.ModelEvent, message)
        return self._watcher.on_event(event)

    def _on_feature_vector(self, message: Message) -> list[DriftReportData]:
        vector = self._decode(features_pb2.FeatureVector, message)
        reference = self._monitor.reference
        if reference is None:
            raise _Skip("no_reference")
        if vector.feature_set and reference.feature_set and vector.feature_set != reference.feature_set:
            raise _Skip("other_feature_set")
        values = {
            v.name: (math.nan if v.status == features_pb2.FEATURE_STATUS_MISSING else v.value)
            for v in vector.values
        }
        row = self._monitor.feature_row(values)
        event_time = _seconds(vector.event_time)
        time_s = event_time if math.isfinite(event_time) else _message_time(message)
        metrics.EVENTS.labels("features").inc()
        return self._monitor.observe_features(row.reshape(1, -1), np.array([time_s]))

    def _on_prediction(self, message: Message) -> list[DriftReportData]:
        log_msg = self._decode(inference_pb2.PredictionLog, message)
        if not log_msg.prediction_id:
            raise _Skip("no_prediction_id")
        if not math.isfinite(log_msg.score):
            raise _Skip("bad_score")
        record = prediction_record(log_msg, _message_time(message))
        self._tracker.add(self._joiner.add_prediction(record))
        watched = (
            record.model_name == self._watcher.model_name
            and record.model_version == self._monitor.version
            and record.role in CHAMPION_ROLES
        )
        if not watched:
            return []
        metrics.EVENTS.labels("predictions").inc()
        return self._monitor.observe_predictions(np.array([record.score]), np.array([record.predicted_at]))

    def _on_feedback(self, message: Message) -> list[Output] | DeadLetter:
        try:
            label = decode_value(feedback_pb2.FeedbackLabel, message)
        except ValueError as err:
            metrics.FEEDBACK.labels("invalid").inc()
            return DeadLetter("undecodable", str(err))
        try:
            result = self._joiner.add_label(label_record(label))
        except InvalidFeedback as err:
            metrics.FEEDBACK.labels("invalid").inc()
            return DeadLetter(err.code, str(err))
        self._tracker.add(result.joined)
        return []

    def startup_outputs(self, reports: Sequence[DriftReportData]) -> list[Output]:
        return [self._report_output(r) for r in reports]

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _decode(message_type: type[M], message: Message) -> M:
        try:
            return decode(message_type, message.value() or b"")
        except ValueError as err:
            raise _Skip("undecodable", str(err)) from err

    def _report_output(self, report: DriftReportData) -> Output:
        metrics.DRIFT_REPORTS.labels(report.stream, report.detector, report.status.name).inc()
        return Output(
            topic=self._topics.drift_reports.name,
            key=report.model_name,
            value=report_to_proto(report).SerializeToString(),
            headers=list(_HEADERS),
        )

    def _degradation_output(self, degradation: Degradation) -> Output:
        metrics.DEGRADATIONS.labels(degradation.model_name, degradation.metric).inc()
        log.info(
            "performance_degraded",
            model=degradation.model_name,
            version=degradation.model_version,
            metric=degradation.metric,
            value=round(degradation.value, 4),
            threshold=degradation.threshold,
        )
        return Output(
            topic=self._topics.degradations.name,
            key=degradation.model_name,
            value=degradation_to_proto(degradation).SerializeToString(),
            headers=list(_HEADERS),
        )

    def _record_join_counts(self) -> None:
        counts = self._joiner.counts
        delta = {k: counts[k] - self._join_counts[k] for k in counts}
        metrics.record_join_counts(delta)
        self._join_counts = Counter(counts)
        metrics.FEEDBACK_PENDING.set(self._joiner.pending)
        metrics.PREDICTIONS_HELD.set(self._joiner.predictions_held)
