"""Kafka adapters: trigger topics -> scheduler, feedback topic -> label log.

Both only convert wire messages into domain objects and hand them to the core. The trigger
topics declare no dead-letter topic, so a message there that can never start a retrain is
counted and skipped (it stays on its topic, retained 30 days). So is a drift report or a
degradation about a version that is not the champion now: after a promotion, late reports about
the old champion would retrain against the new one and judge it by the old one's fall. Feedback
that cannot be a label is counted and skipped too: the drift service, which owns the feedback
contract (it joins labels to predictions), writes the feedback topic's dead letters, so each bad
label has one dead-letter record, not one per consumer group.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from confluent_kafka import Message

from driftline.drift.v1 import drift_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.kit.codec import decode, from_timestamp
from driftline.kit.errors import Unavailable
from driftline.kit.kafka import Outcome, decode_value
from driftline.kit.topics import DRIFT_REPORTS, PERFORMANCE_DEGRADATIONS, RETRAIN_REQUESTS, Topic
from driftline.services.trainer import metrics
from driftline.services.trainer.labels import LabelLog, LabelRecord
from driftline.services.trainer.triggers import DEGRADATION, DRIFT, MANUAL, Trigger
from driftline.trainer.v1 import trainer_pb2

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TriggerTopics:
    """The three topics that can start a retrain (namespaced copies in tests)."""

    drift_reports: Topic = DRIFT_REPORTS
    degradations: Topic = PERFORMANCE_DEGRADATIONS
    retrain_requests: Topic = RETRAIN_REQUESTS

    def all(self) -> list[Topic]:
        return [self.drift_reports, self.degradations, self.retrain_requests]


class TriggerHandler:
    """Batch handler: each message becomes a trigger for ``submit``, or is skipped (never poison).

    ``champion`` returns the champion's version now (0: none); a registry outage it raises
    (``Unavailable``) holds the batch back until the registry answers.
    """

    def __init__(
        self,
        model_name: str,
        submit: Callable[[Trigger], object],
        *,
        champion: Callable[[], int],
        topics: TriggerTopics | None = None,
        clock: Callable[[], float],
    ) -> None:
        self._model = model_name
        self._submit = submit
        self._champion = champion
        self._topics = topics or TriggerTopics()
        self._clock = clock

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        # Asked at most once per batch, and only when a message names a version: every message
        # was published before the batch was polled, so the answer is no older than any of them.
        champion = functools.cache(self._champion_or_outage)
        for message in messages:
            trigger = self.to_trigger(message, champion)
            if trigger is not None:
                self._submit(trigger)
        return [[] for _ in messages]

    def to_trigger(self, message: Message, champion: Callable[[], int] | None = None) -> Trigger | None:
        champion = champion or self._champion
        topic = message.topic() or ""
        payload = message.value() or b""
        fallback_id = f"{topic}:{message.partition()}:{message.offset()}"
        try:
            if topic == self._topics.drift_reports.name:
                report = decode(drift_pb2.DriftReport, payload)
                if report.status != drift_pb2.DRIFT_STATUS_DRIFT:
                    return self._skip(topic, "not_drift")
                trigger_id = report.report_id or fallback_id
                if self._stale(topic, trigger_id, report.model_name, report.model_version, champion):
                    return self._skip(topic, "not_champion")
                return self._trigger(topic, DRIFT, trigger_id, report.model_name, report.detector)
            if topic == self._topics.degradations.name:
                event = decode(drift_pb2.PerformanceDegradation, payload)
                detail = f"{event.metric}={event.value:.4f} < {event.threshold:.4f}"
                trigger_id = event.event_id or fallback_id
                if self._stale(topic, trigger_id, event.model_name, event.model_version, champion):
                    return self._skip(topic, "not_champion")
                return self._trigger(topic, DEGRADATION, trigger_id, event.model_name, detail)
            if topic == self._topics.retrain_requests.name:
                request = decode(trainer_pb2.RetrainRequest, payload)
                kind = request.trigger if request.trigger in (DRIFT, DEGRADATION, MANUAL) else MANUAL
                detail = f"requested by {request.requested_by or 'unknown'}"
                return self._trigger(
                    topic, kind, request.request_id or fallback_id, request.model_name, detail
                )
        except ValueError as err:
            log.warning("trigger_undecodable", topic=topic, offset=message.offset(), error=str(err))
            return self._skip(topic, "undecodable")
        return self._skip(topic, "unknown_topic")

    def _trigger(
        self, topic: str, kind: str, trigger_id: str, model_name: str, detail: str
    ) -> Trigger | None:
        if model_name != self._model:
            return self._skip(topic, "other_model")
        return Trigger(
            kind=kind, trigger_id=trigger_id, model_name=model_name, received_at=self._clock(), detail=detail
        )

    def _champion_or_outage(self) -> int:
        """The champion's version; any failure to say it (a registry down, slow, or erring) is an
        outage: no trigger is at fault for it, and the trigger topics have no dead-letter topic,
        so dead-lettering would skip (lose) the batch's triggers."""
        try:
            return self._champion()
        except Unavailable:
            raise
        except Exception as err:
            raise Unavailable(f"the registry cannot say which version is the champion: {err}") from err

    def _stale(
        self, topic: str, trigger_id: str, model_name: str, version: int, champion: Callable[[], int]
    ) -> bool:
        """Whether the message is about a known version of this model that is not the champion now."""
        if model_name != self._model or not version:
            return False
        current = champion()
        if version == current:
            return False
        log.info(
            "trigger_not_about_champion",
            topic=topic,
            trigger_id=trigger_id,
            version=version,
            champion=current,
        )
        return True

    def _skip(self, topic: str, reason: str) -> Trigger | None:
        """Count a message that starts no retrain; returns None (no trigger)."""
        metrics.TRIGGERS_IGNORED.labels(topic, reason).inc()
        return None


class LabelHandler:
    """Batch handler: a batch's usable labels become one append to the label log."""

    def __init__(self, log_: LabelLog) -> None:
        self._log = log_

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        records: list[LabelRecord] = []
        for message in messages:
            outcome, record = self.to_record(message)
            outcomes.append(outcome)
            if record is not None:
                records.append(record)
        # One immutable file per batch. A file that cannot be written (disk full, read-only
        # volume) is not the labels' fault: the loop holds the batch back until it can be, rather
        # than dead-lettering good labels (driftline.kit.outages).
        try:
            self._log.append(records)
        except OSError as err:
            raise Unavailable(f"the label log cannot be written: {err}") from err
        metrics.LABELS.labels("appended").inc(len(records))
        return outcomes

    @staticmethod
    def to_record(message: Message) -> tuple[Outcome, LabelRecord | None]:
        try:
            label = decode_value(feedback_pb2.FeedbackLabel, message)  # protobuf or JSON, as drift reads it
        except ValueError as err:
            metrics.LABELS.labels("undecodable").inc()
            log.debug("label_skipped", reason="undecodable", offset=message.offset(), error=str(err))
            return [], None
        if label.label not in (0, 1):
            metrics.LABELS.labels("invalid_label").inc()
            log.debug("label_skipped", reason="invalid_label", offset=message.offset(), label=label.label)
            return [], None
        if not (label.entity_id and label.event_id and label.HasField("event_time")):
            # Valid feedback (the drift service joins it by prediction id), but without the event's
            # entity, id and time it cannot be placed in a point-in-time training set.
            metrics.LABELS.labels("no_event_key").inc()
            return [], None
        event_time = from_timestamp(label.event_time)
        label_time = from_timestamp(label.label_time) if label.HasField("label_time") else event_time
        return [], LabelRecord(
            entity_id=label.entity_id,
            event_id=label.event_id,
            label=int(label.label),
            event_time=event_time,
            label_time=label_time,
            feedback_id=label.feedback_id,
        )
