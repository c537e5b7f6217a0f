"""The drift service on the real broker: its consumer loop in this process, topics of its own.

The registry is replaced by an in-memory reference source (the registry's own tests cover it);
Kafka is real. One service instance per module walks through the scenarios in order: a stationary
feature stream (no DRIFT report), a shifted one (DRIFT), a champion change through the
model-events topic, and predictions with late, duplicated labels (joined exactly once, then a
performance degradation when accuracy drops).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from confluent_kafka import Message

from driftline.drift.v1 import drift_pb2
from driftline.features.v1 import features_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import decode
from driftline.kit.kafka import KafkaProducer
from driftline.kit.settings import KafkaSettings, MetricsSettings
from driftline.kit.testing import consume, create_test_topics, delete_topics, unique_prefix
from driftline.registry.v1 import registry_pb2
from driftline.services.drift.app import DriftApp
from driftline.services.drift.config import Settings
from driftline.services.drift.consumer import DriftTopics
from driftline.services.drift.fakes import InMemoryReferenceSource, model_version
from driftline.services.drift.simulated import FEATURES, SimulatedStream, ToyModel, simulate
from driftline.simulator import SimulatorConfig

pytestmark = pytest.mark.integration

REFERENCE_ROWS = 1500
STATIONARY_ROWS = 1200
DRIFTED_ROWS = 600
SKIP = 5000


@dataclass
class Service:
    app: DriftApp
    thread: threading.Thread
    topics: DriftTopics
    producer: KafkaProducer
    source: InMemoryReferenceSource
    kafka: KafkaSettings
    stream: SimulatedStream
    model: ToyModel
    errors: list[BaseException]

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        assert condition(), f"timed out waiting for {what}; errors: {self.errors}"

    def reports(self, expected: int = 10_000, timeout_s: float = 3.0) -> list[drift_pb2.DriftReport]:
        messages = consume(self.kafka, self.topics.drift_reports.name, expected=expected, timeout_s=timeout_s)
        return [decode(drift_pb2.DriftReport, m.value() or b"") for m in messages]

    def send_vectors(self, rows: np.ndarray, start: int) -> None:
        for i, row in enumerate(rows):
            vector = features_pb2.FeatureVector(
                entity_id=f"card-{i % 50}",
                event_id=f"ev-{start + i}",
                values=[
                    features_pb2.FeatureValue(name=n, value=float(v))
                    for n, v in zip(FEATURES, row, strict=True)
                ],
            )
            self.producer.send(self.topics.feature_vectors, vector.SerializeToString(), key=vector.entity_id)
        self.producer.flush(30)


@pytest.fixture(scope="module")
def service(kafka_settings: KafkaSettings) -> Iterator[Service]:
    stream = simulate(
        SimulatorConfig(seed=41, covariate_drift_at=SKIP + REFERENCE_ROWS + STATIONARY_ROWS),
        SKIP + REFERENCE_ROWS + STATIONARY_ROWS + DRIFTED_ROWS,
        skip=SKIP,
    )
    model = ToyModel(stream.features[:REFERENCE_ROWS], stream.labels[:REFERENCE_ROWS])
    reference = stream.features[:REFERENCE_ROWS]
    source = InMemoryReferenceSource()
    for version in (1, 2):
        source.add(
            model_version(version, FEATURES, reference, model.score(reference), decision_threshold=0.5)
        )
    source.aliases[("fraud", "champion")] = 1

    prefix = unique_prefix()
    topics = DriftTopics().namespaced(prefix)
    create_test_topics(kafka_settings, topics.all)
    settings = Settings(
        kafka=kafka_settings,
        metrics=MetricsSettings(enabled=False),
        metrics_port=0,
        group_id=f"{prefix}drift",
        report_cooldown_s=0,
        performance_window=200,
        performance_min_labels=100,
        degradation_metric="accuracy",
        degradation_threshold=0.8,
        degradation_cooldown_s=3600,
    )
    app = DriftApp(settings, reference_source=source, topics=topics)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            app.run()
        except BaseException as err:  # surfaced by Service.wait
            errors.append(err)
            raise

    thread = threading.Thread(target=run, name="drift-service", daemon=True)
    thread.start()
    producer = KafkaProducer(kafka_settings)
    running = Service(app, thread, topics, producer, source, kafka_settings, stream, model, errors)
    running.wait(lambda: app.monitor.version == 1, "the reference to load")
    try:
        yield running
    finally:
        app.stop()
        thread.join(timeout=30)
        app.close()
        producer.close()
        delete_topics(kafka_settings, topics.all)


def _drift(reports: list[drift_pb2.DriftReport]) -> list[drift_pb2.DriftReport]:
    return [r for r in reports if r.status == drift_pb2.DRIFT_STATUS_DRIFT]


def test_a_stationary_stream_gets_no_drift_report(service: Service) -> None:
    rows = service.stream.features[REFERENCE_ROWS : REFERENCE_ROWS + STATIONARY_ROWS]
    service.send_vectors(rows, 0)
    service.wait(lambda: service.app.monitor.events_seen["features"] >= len(rows), "the stationary vectors")
    reports = service.reports()
    assert _drift(reports) == []
    # The detectors did look: their verdicts are clean, and said so once.
    assert {(r.detector, r.status) for r in reports if r.stream == "features"} >= {
        ("window", drift_pb2.DRIFT_STATUS_NO_DRIFT),
        ("cvm-online", drift_pb2.DRIFT_STATUS_NO_DRIFT),
    }


def test_a_shifted_stream_gets_a_drift_report(service: Service) -> None:
    rows = service.stream.features[REFERENCE_ROWS + STATIONARY_ROWS :]
    service.send_vectors(rows, STATIONARY_ROWS)
    service.wait(
        lambda: any(s.name == "DRIFT" for s in service.app.monitor.states().values()), "a DRIFT state"
    )
    drift = _drift(service.reports())
    assert drift, "no DRIFT report on the drift topic"
    first = drift[0]
    assert (first.model_name, first.model_version, first.stream) == ("fraud", 1, "features")
    assert first.events_seen > STATIONARY_ROWS
    assert any(f.drifted for f in first.features)
    assert all(f.test in {"ks", "chi2", "cvm-online", "fet-online"} for f in first.features)


def test_a_new_champion_reloads_the_reference(service: Service) -> None:
    service.source.aliases[("fraud", "champion")] = 2
    event = registry_pb2.ModelEvent(
        event_id="e2",
        type=registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET,
        model_name="fraud",
        version=2,
        alias="champion",
    )
    service.producer.send(service.topics.model_events, event.SerializeToString(), key="fraud")
    service.producer.flush(30)
    service.wait(lambda: service.app.monitor.version == 2, "the new champion's reference")
    assert service.app.monitor.events_seen["features"] == 0


def _prediction(i: int, score: float) -> inference_pb2.PredictionLog:
    return inference_pb2.PredictionLog(
        prediction_id=f"p{i}",
        entity_id=f"card-{i}",
        event_id=f"pev-{i}",
        model_name="fraud",
        model_version=2,
        score=score,
        label=int(score >= 0.5),
        role="champion",
    )


def test_labels_are_joined_once_and_falling_accuracy_raises_a_degradation(service: Service) -> None:
    n = 300
    # Labels first (late predictions), by prediction id for half and by entity/event for the rest;
    # the first 100 agree with the prediction, the last 200 do not; 60 are sent twice.
    labels = []
    for i in range(n):
        right = i < 100
        label = feedback_pb2.FeedbackLabel(feedback_id=f"fb-{i}", label=1 if right else 0)
        if i % 2:
            label.prediction_id = f"p{i}"
        else:
            label.entity_id, label.event_id = f"card-{i}", f"pev-{i}"
        labels.append(label)
    for label in labels + labels[:60]:
        service.producer.send(
            service.topics.feedback, label.SerializeToString(), key=label.prediction_id or label.entity_id
        )
    service.producer.flush(30)
    for i in range(n):
        service.producer.send(
            service.topics.predictions, _prediction(i, 0.9).SerializeToString(), key=f"card-{i}"
        )
    service.producer.flush(30)
    joiner = service.app.joiner
    service.wait(
        lambda: joiner.counts["joined"] >= n and joiner.counts["duplicate_feedback"] >= 60, "the join"
    )
    degradations: list[Message] = consume(
        service.kafka, service.topics.degradations.name, expected=1, timeout_s=30
    )
    assert joiner.counts["joined"] == n
    assert joiner.counts["duplicate_feedback"] == 60
    assert joiner.pending == 0
    [event] = [decode(drift_pb2.PerformanceDegradation, m.value() or b"") for m in degradations]
    assert (event.model_name, event.model_version, event.metric) == ("fraud", 2, "accuracy")
    assert event.value < event.threshold == 0.8
