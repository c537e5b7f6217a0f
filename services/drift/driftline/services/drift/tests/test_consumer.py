"""The Kafka adapter with fake messages: routing, outputs, bad input, reference reloads."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format

from driftline.drift.v1 import drift_pb2
from driftline.features.v1 import features_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import decode
from driftline.kit.kafka import CONTENT_TYPE, JSON, DeadLetter, Output
from driftline.kit.testing import FakeMessage
from driftline.registry.v1 import registry_pb2
from driftline.services.drift.consumer import DriftHandler, DriftTopics
from driftline.services.drift.detectors import Stream
from driftline.services.drift.fakes import InMemoryReferenceSource, ScriptedFactory, model_version
from driftline.services.drift.feedback import FeedbackJoiner
from driftline.services.drift.hysteresis import HysteresisPolicy
from driftline.services.drift.monitor import DriftMonitor, MonitorConfig
from driftline.services.drift.performance import PerformancePolicy, PerformanceTracker
from driftline.services.drift.reference import ReferenceWatcher

TOPICS = DriftTopics()
NAMES = ["amount", "is_foreign"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, *, source: InMemoryReferenceSource | None = None) -> None:
        self.clock = Clock()
        self.source = source or InMemoryReferenceSource()
        if source is None:
            self.source.add(_version(1), alias="champion")
        policy = HysteresisPolicy(enter_after=2, exit_after=2, cooldown_s=300)
        self.factory = ScriptedFactory()
        self.monitor = DriftMonitor(
            MonitorConfig(window_policy=policy, online_policy=policy), self.factory, clock=self.clock
        )
        self.watcher = ReferenceWatcher(
            self.source, self.monitor, model_name="fraud", alias="champion", retry_s=10, clock=self.clock
        )
        self.joiner = FeedbackJoiner(horizon_s=600, clock=self.clock)
        self.tracker = PerformanceTracker(
            PerformancePolicy(window=10, min_labels=4, metric="accuracy", threshold=0.75, cooldown_s=300),
            clock=self.clock,
        )
        self.handler = DriftHandler(
            monitor=self.monitor,
            watcher=self.watcher,
            joiner=self.joiner,
            tracker=self.tracker,
            topics=TOPICS,
        )
        self._offset = 0

    def message(
        self, topic: str, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> FakeMessage:
        self._offset += 1
        return FakeMessage(
            value,
            _topic=topic,
            _offset=self._offset,
            _headers=headers or [],
            _timestamp_ms=int(self.clock.now * 1000),
        )

    def outputs(self, messages: list[FakeMessage]) -> tuple[list[Output], list[DeadLetter]]:
        outcomes = self.handler(messages)
        assert len(outcomes) == len(messages)
        outputs = [o for outcome in outcomes if not isinstance(outcome, DeadLetter) for o in outcome]
        dead = [o for o in outcomes if isinstance(o, DeadLetter)]
        return outputs, dead


def _version(number: int, *, scores: bool = True) -> registry_pb2.ModelVersion:
    rng = np.random.default_rng(number)
    values = np.column_stack([rng.random(50), rng.integers(0, 2, 50)])
    return model_version(number, NAMES, values, rng.random(50) if scores else None, decision_threshold=0.5)


def _vector(amount: float, *, event_id: str = "ev", feature_set: str = "") -> bytes:
    return features_pb2.FeatureVector(
        entity_id="card-1",
        event_id=event_id,
        feature_set=feature_set,
        values=[
            features_pb2.FeatureValue(name="amount", value=amount),
            features_pb2.FeatureValue(name="is_foreign"),
        ],
    ).SerializeToString()


def _prediction(pid: str, score: float, *, version: int = 1, role: str = "champion") -> bytes:
    return inference_pb2.PredictionLog(
        prediction_id=pid,
        entity_id="card-1",
        event_id=f"ev-{pid}",
        model_name="fraud",
        model_version=version,
        score=score,
        label=int(score >= 0.5),
        role=role,
    ).SerializeToString()


def _label(feedback_id: str, pid: str, label: int) -> bytes:
    return feedback_pb2.FeedbackLabel(
        feedback_id=feedback_id, prediction_id=pid, label=label
    ).SerializeToString()


def _reports(outputs: list[Output]) -> list[drift_pb2.DriftReport]:
    return [decode(drift_pb2.DriftReport, o.value) for o in outputs if o.topic == TOPICS.drift_reports.name]


def test_drifted_feature_vectors_produce_a_drift_report_keyed_by_model() -> None:
    h = Harness()
    messages = [
        h.message(TOPICS.feature_vectors.name, _vector(a, event_id=f"e{i}"))
        for i, a in enumerate([0.1, 0.9, 0.9])
    ]
    outputs, dead = h.outputs(messages)
    assert dead == []
    reports = _reports(outputs)
    assert [r.status for r in reports] == [drift_pb2.DRIFT_STATUS_NO_DRIFT, drift_pb2.DRIFT_STATUS_DRIFT]
    drift = reports[1]
    assert (drift.model_name, drift.model_version, drift.stream, drift.detector) == (
        "fraud",
        1,
        "features",
        "window",
    )
    assert drift.events_seen == 3
    assert drift.features[0].feature == "amount"
    assert drift.features[0].drifted
    assert drift.detected_at.seconds == int(h.clock.now)
    assert all(o.key == "fraud" for o in outputs)


def test_feature_vectors_of_another_feature_set_or_undecodable_are_skipped_not_fatal() -> None:
    source = InMemoryReferenceSource()
    v = _version(1)
    v.feature_set = "card_transactions"
    source.add(v, alias="champion")
    h = Harness(source=source)
    outputs, dead = h.outputs(
        [
            h.message(TOPICS.feature_vectors.name, b"\xff\x00 not protobuf"),
            h.message(TOPICS.feature_vectors.name, _vector(0.9, feature_set="other")),
            h.message(TOPICS.model_events.name, b"\xff\xff"),
        ]
    )
    assert outputs == []
    assert dead == []
    assert h.monitor.events_seen["features"] == 0


def test_predictions_are_joined_to_labels_and_a_degradation_follows_bad_accuracy() -> None:
    h = Harness()
    messages = [h.message(TOPICS.predictions.name, _prediction(f"p{i}", 0.9)) for i in range(6)]
    # Two right, four wrong: accuracy 1/3 < 0.75.
    messages += [
        h.message(TOPICS.feedback.name, _label(f"f{i}", f"p{i}", 1 if i < 2 else 0)) for i in range(6)
    ]
    outputs, dead = h.outputs(messages)
    assert dead == []
    [degradation] = [
        decode(drift_pb2.PerformanceDegradation, o.value)
        for o in outputs
        if o.topic == TOPICS.degradations.name
    ]
    assert (degradation.model_name, degradation.model_version, degradation.metric) == ("fraud", 1, "accuracy")
    assert degradation.value == pytest.approx(2 / 6)
    assert degradation.labelled_count == 6
    assert h.joiner.counts["joined"] == 6


def test_champion_predictions_feed_the_prediction_detectors_and_others_only_the_join() -> None:
    h = Harness()
    h.outputs(
        [
            h.message(TOPICS.predictions.name, _prediction("a", 0.2)),
            h.message(TOPICS.predictions.name, _prediction("b", 0.7, role="shadow")),
            h.message(TOPICS.predictions.name, _prediction("c", 0.7, version=9)),
        ]
    )
    seen = h.factory.detectors[Stream.PREDICTIONS].rows_seen
    assert [list(r) for r in seen] == [[0.2, 0.0]]
    assert h.joiner.predictions_held == 3


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\x00garbage", "undecodable"),
        (feedback_pb2.FeedbackLabel(feedback_id="f", label=1).SerializeToString(), "no_key"),
        (
            feedback_pb2.FeedbackLabel(feedback_id="f", prediction_id="p", label=7).SerializeToString(),
            "bad_label",
        ),
    ],
)
def test_bad_feedback_goes_to_the_dead_letter_topic_with_a_reason(payload: bytes, reason: str) -> None:
    h = Harness()
    outcomes = h.handler([h.message(TOPICS.feedback.name, payload)])
    assert isinstance(outcomes[0], DeadLetter)
    assert outcomes[0].reason == reason


def test_feedback_sent_as_json_is_accepted() -> None:
    h = Harness()
    h.outputs([h.message(TOPICS.predictions.name, _prediction("p1", 0.9))])
    label = json_format.MessageToJson(
        feedback_pb2.FeedbackLabel(feedback_id="f1", prediction_id="p1", label=1)
    )
    _, dead = h.outputs([h.message(TOPICS.feedback.name, label.encode(), [(CONTENT_TYPE, JSON.encode())])])
    assert dead == []
    assert h.joiner.counts["joined"] == 1


def _alias_event(
    version: int, *, kind: int = registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET, alias: str = "champion"
) -> bytes:
    return registry_pb2.ModelEvent(
        event_id=f"e{version}",
        type=kind,
        model_name="fraud",
        version=version,
        alias=alias,  # type: ignore[arg-type]
    ).SerializeToString()


def test_an_alias_event_reloads_the_reference_and_a_replay_does_not() -> None:
    h = Harness()
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.1))])
    assert h.monitor.version == 1
    h.source.add(_version(2), alias="champion")
    h.outputs([h.message(TOPICS.model_events.name, _alias_event(2))])
    assert h.monitor.version == 2
    builds = len(h.factory.builds)
    calls = h.source.calls
    h.outputs([h.message(TOPICS.model_events.name, _alias_event(2))])
    assert len(h.factory.builds) == builds
    assert h.source.calls == calls
    # Another alias, or another model, changes nothing.
    h.outputs([h.message(TOPICS.model_events.name, _alias_event(3, alias="challenger"))])
    assert h.monitor.version == 2


def test_a_deleted_alias_stops_the_detectors_with_an_insufficient_data_report() -> None:
    h = Harness()
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.1))])
    outputs, _ = h.outputs(
        [
            h.message(
                TOPICS.model_events.name, _alias_event(1, kind=registry_pb2.MODEL_EVENT_TYPE_ALIAS_DELETED)
            )
        ]
    )
    assert {r.status for r in _reports(outputs)} == {drift_pb2.DRIFT_STATUS_INSUFFICIENT_DATA}
    assert h.monitor.version is None


def test_an_unreachable_registry_is_retried_and_features_wait_for_the_reference() -> None:
    h = Harness()
    h.source.down = True
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.9))])
    assert h.monitor.version is None
    assert h.source.calls == 1
    h.source.down = False
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.9))])
    assert h.source.calls == 1  # not before retry_s
    h.clock.now += 11
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.9))])
    assert h.monitor.version == 1
    assert h.monitor.events_seen["features"] == 1


def test_batch_outputs_ride_on_the_last_message_that_is_not_a_dead_letter() -> None:
    h = Harness()
    h.outputs([h.message(TOPICS.predictions.name, _prediction(f"p{i}", 0.9)) for i in range(4)])
    outcomes = h.handler(
        [h.message(TOPICS.feedback.name, _label(f"f{i}", f"p{i}", 0)) for i in range(4)]
        + [h.message(TOPICS.feedback.name, b"\xff\xff")]
    )
    # The degradation rides on the last outcome that is not a dead letter.
    assert isinstance(outcomes[-1], DeadLetter)
    assert any(o.topic == TOPICS.degradations.name for o in outcomes[-2])  # type: ignore[union-attr]


def test_outputs_of_a_batch_of_only_dead_letters_ride_on_the_next_batch() -> None:
    source = InMemoryReferenceSource()
    source.add(_version(1, scores=False), alias="champion")
    h = Harness(source=source)
    # Loading a reference without scores reports the prediction stream unwatched.
    outcomes = h.handler([h.message(TOPICS.feedback.name, b"\xff\xff")])
    assert isinstance(outcomes[0], DeadLetter)
    outputs, _ = h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.1))])
    assert next((r.stream, r.status) for r in _reports(outputs)) == (
        "predictions",
        drift_pb2.DRIFT_STATUS_INSUFFICIENT_DATA,
    )


class _Exploding:
    name = "window"

    def update(self, rows: np.ndarray, times: np.ndarray) -> list:
        raise RuntimeError("detector bug")

    def reset(self) -> None:
        return None


def test_an_unexpected_detector_error_is_counted_and_the_loop_goes_on() -> None:
    h = Harness()
    h.factory.build = lambda *args, **kwargs: [_Exploding()]  # type: ignore[method-assign]
    outcomes = h.handler(
        [
            h.message(TOPICS.feature_vectors.name, _vector(0.9)),
            h.message(TOPICS.predictions.name, _prediction("p", 0.9)),
        ]
    )
    assert outcomes == [[], []]
    assert h.joiner.predictions_held == 1


def test_a_reference_that_fails_to_build_is_retried_later() -> None:
    h = Harness()
    real_build = h.factory.build

    def failing(*args: object, **kwargs: object) -> list:
        raise RuntimeError("calibration bug")

    h.factory.build = failing  # type: ignore[method-assign,assignment]
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.1))])
    assert h.monitor.version is None
    h.factory.build = real_build  # type: ignore[method-assign]
    h.clock.now += 11
    h.outputs([h.message(TOPICS.feature_vectors.name, _vector(0.1))])
    assert h.monitor.version == 1
