"""What the demo sees of the loop from the outside: it scores entities as their features change
(like a real client would), and watches drift reports, model events and feedback labels to
measure live accuracy, detection delay and time to the new champion independently of the
services' own metrics."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import structlog
from confluent_kafka import Consumer

from driftline.drift.v1 import drift_pb2
from driftline.features.v1 import features_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.inference.v1 import inference_pb2, inference_pb2_grpc
from driftline.kit.codec import decode
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import (
    DRIFT_REPORTS,
    FEATURE_VECTORS,
    FEEDBACK,
    MODEL_EVENTS,
    PERFORMANCE_DEGRADATIONS,
    Topic,
)
from driftline.registry.v1 import registry_pb2
from driftline.services.trainer.triggers import DEGRADATION, DRIFT

log = structlog.get_logger(__name__)


@dataclass
class Timeline:
    """Wall-clock moments of the loop, in time.time() seconds."""

    drift_onset: float | None = None
    first_drift_report: float | None = None
    retrain_started: float | None = None
    new_champion_registered: float | None = None
    new_champion_version: int = 0
    first_served_by_new_champion: float | None = None
    #: Champions promoted after the onset, in order (the first is ``new_champion_version``).
    promoted_after_onset: list[int] = field(default_factory=list)
    #: When each version served its first prediction.
    first_served: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PhaseScores:
    """Accuracy and fraud recall/precision over the labelled predictions of one phase."""

    labelled: int
    accuracy: float | None
    recall: float | None
    precision: float | None

    @classmethod
    def of(cls, pairs: list[tuple[int, int]]) -> PhaseScores:
        if not pairs:
            return cls(0, None, None, None)
        tp = sum(1 for p, a in pairs if p == 1 and a == 1)
        fn = sum(1 for p, a in pairs if p == 0 and a == 1)
        fp = sum(1 for p, a in pairs if p == 1 and a == 0)
        correct = sum(1 for p, a in pairs if p == a)
        return cls(
            labelled=len(pairs),
            accuracy=correct / len(pairs),
            recall=tp / (tp + fn) if tp + fn else None,
            precision=tp / (tp + fp) if tp + fp else None,
        )


@dataclass
class Stats:
    """Counters the live view and the summary read; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    predictions: int = 0
    prediction_errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    served_versions: dict[int, int] = field(default_factory=dict)
    champion_version: int = 0
    drift_status: str = "waiting"
    drift_reports: int = 0
    #: DRIFT reports before drift was injected.
    false_alarms: int = 0
    #: After the onset: DRIFT reports of the drift service, and performance degradations (from
    #: the feedback join), each a signal the trainer may act on.
    drift_signals_after_onset: dict[str, int] = field(default_factory=lambda: {DRIFT: 0, DEGRADATION: 0})
    #: Champion promotions before drift was injected.
    early_promotions: int = 0
    # (entity_id, event_id) -> (label predicted, model version)
    predicted: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    # (predicted, actual) per phase: "before", "after_drift", "after_promotion"
    phase_pairs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # (predicted, actual) per model version, every labelled prediction it served
    version_pairs: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)

    def latency_quantile(self, q: float) -> float | None:
        with self.lock:
            values = sorted(self.latencies_ms)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def live_accuracy(self, version: int) -> float | None:
        """Accuracy over a version's last 500 labelled predictions (the live view's figure)."""
        return self.version_scores(version, last=500).accuracy

    def phase_scores(self, phase: str) -> PhaseScores:
        with self.lock:
            pairs = list(self.phase_pairs.get(phase, []))
        return PhaseScores.of(pairs)

    def final_champion(self) -> int:
        """The champion when it is the last one promoted after the drift, else 0 (none yet, or
        rolled back to an older version)."""
        with self.lock:
            promoted = self.timeline.promoted_after_onset
            return self.champion_version if promoted and self.champion_version == promoted[-1] else 0

    def recovered(self, *, labels: int, recall: float, precision: float = 0.0) -> bool:
        """Whether the final champion (``final_champion``) has served ``labels`` labelled
        predictions and, among the last ``labels`` of them, caught at least ``recall`` of the
        frauds with at least ``precision`` of its fraud verdicts right (either not asked when 0)."""
        version = self.final_champion()
        if not version:
            return False
        scores = self.version_scores(version, last=labels)
        if scores.labelled < labels:
            return False
        caught = recall <= 0 or (scores.recall or 0.0) >= recall
        return caught and (precision <= 0 or (scores.precision or 0.0) >= precision)

    def version_scores(self, version: int, last: int) -> PhaseScores:
        """Scores of a version's ``last`` labelled predictions (fewer when it has fewer)."""
        with self.lock:
            pairs = self.version_pairs.get(version, [])[-last:]
        return PhaseScores.of(pairs)


def event_index(event_id: str) -> int | None:
    """The simulator's event index inside an event id (``ev-<run>-<index>``), if it has one."""
    _, _, tail = event_id.rpartition("-")
    return int(tail) if tail.isdigit() else None


class Observer:
    """Background threads: a scorer (features -> Predict) and a watcher (reports, events, labels)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        inference_address: str,
        model_name: str,
        stats: Stats,
        *,
        group_prefix: str = "demo",
        phase: Callable[[], str] = lambda: "before",
        scorer_threads: int = 4,
        drift_index: int | None = None,
    ) -> None:
        self._drift_index = drift_index
        #: Seconds between the newest feature vector's event time and the wall clock.
        self.feature_lag_s: float | None = None
        #: Predict for each feature vector (off while the stream warms up).
        self.scoring = threading.Event()
        self._kafka = kafka
        self._address = inference_address
        self._model_name = model_name
        self._stats = stats
        self._group_prefix = group_prefix
        self._phase = phase
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=scorer_threads, thread_name_prefix="scorer")
        self._channel = grpc.insecure_channel(inference_address)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def start(self) -> None:
        for target, name in ((self._score_loop, "scorer"), (self._watch_loop, "watcher")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._channel.close()

    def _consumer(self, suffix: str, topics: list[Topic], offset_reset: str) -> Consumer:
        consumer = Consumer(
            {
                **self._kafka.connection(),
                "group.id": f"{self._group_prefix}-{suffix}-{int(time.time())}",
                "auto.offset.reset": offset_reset,
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([t.name for t in topics])
        return consumer

    def _score_loop(self) -> None:
        consumer = self._consumer("scorer", [FEATURE_VECTORS], "latest")
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=200, timeout=0.5):
                    if message.error() is not None:
                        continue
                    vector = decode(features_pb2.FeatureVector, message.value() or b"")
                    self._see(vector)
                    if self.scoring.is_set():
                        self._pool.submit(self._predict, vector.entity_id, vector.event_id)
        finally:
            consumer.close()

    def _see(self, vector: features_pb2.FeatureVector) -> None:
        now = time.time()
        self.feature_lag_s = now - vector.event_time.ToMicroseconds() / 1e6
        if self._drift_index is None or self._stats.timeline.drift_onset is not None:
            return
        index = event_index(vector.event_id)
        if index is not None and index >= self._drift_index:
            with self._stats.lock:
                self._stats.timeline.drift_onset = now

    def _predict(self, entity_id: str, event_id: str) -> None:
        started = time.perf_counter()
        try:
            reply = self._stub.Predict(
                inference_pb2.PredictRequest(entity_id=entity_id, event_id=event_id), timeout=2.0
            )
        except grpc.RpcError as err:
            with self._stats.lock:
                self._stats.prediction_errors += 1
                code = err.code().name if err.code() else "UNKNOWN"
                self._stats.error_codes[code] = self._stats.error_codes.get(code, 0) + 1
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        p = reply.prediction
        now = time.time()
        with self._stats.lock:
            s = self._stats
            s.predictions += 1
            s.latencies_ms.append(elapsed_ms)
            s.served_versions[p.model_version] = s.served_versions.get(p.model_version, 0) + 1
            s.timeline.first_served.setdefault(p.model_version, now)
            s.predicted[(entity_id, event_id)] = (p.label, p.model_version)
            if not s.champion_version:
                s.champion_version = p.model_version
            t = s.timeline
            if (
                t.new_champion_version
                and p.model_version == t.new_champion_version
                and t.first_served_by_new_champion is None
            ):
                t.first_served_by_new_champion = now

    def _watch_loop(self) -> None:
        consumer = self._consumer(
            "watcher", [DRIFT_REPORTS, PERFORMANCE_DEGRADATIONS, MODEL_EVENTS, FEEDBACK], "latest"
        )
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=0.5):
                    if message.error() is not None:
                        continue
                    topic = message.topic()
                    value = message.value() or b""
                    if topic == DRIFT_REPORTS.name:
                        report = decode(drift_pb2.DriftReport, value)
                        self._on_drift(report.status == drift_pb2.DRIFT_STATUS_DRIFT, report.status, DRIFT)
                    elif topic == PERFORMANCE_DEGRADATIONS.name:
                        decode(drift_pb2.PerformanceDegradation, value)
                        self._on_drift(True, drift_pb2.DRIFT_STATUS_DRIFT, DEGRADATION)
                    elif topic == MODEL_EVENTS.name:
                        self._on_model_event(decode(registry_pb2.ModelEvent, value))
                    elif topic == FEEDBACK.name:
                        self._on_feedback(decode(feedback_pb2.FeedbackLabel, value))
        finally:
            consumer.close()

    def _on_drift(self, drifted: bool, status: drift_pb2.DriftStatus.ValueType, signal: str) -> None:
        """A drift report, or a performance degradation (which counts as a detection too);
        ``signal`` is which, by the trainer's name for it (the trigger a model's lineage names)."""
        with self._stats.lock:
            self._stats.drift_reports += 1
            self._stats.drift_status = drift_pb2.DriftStatus.Name(status).removeprefix("DRIFT_STATUS_")
            t = self._stats.timeline
            if not drifted:
                return
            if t.drift_onset is None:
                self._stats.false_alarms += 1
                return
            self._stats.drift_signals_after_onset[signal] += 1
            if t.first_drift_report is None:
                t.first_drift_report = time.time()

    def _on_model_event(self, event: registry_pb2.ModelEvent) -> None:
        if event.model_name != self._model_name:
            return
        with self._stats.lock:
            t = self._stats.timeline
            if event.type == registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET and event.alias == "champion":
                if self._stats.champion_version and event.version > self._stats.champion_version:
                    if t.drift_onset is None:
                        self._stats.early_promotions += 1
                    else:
                        t.promoted_after_onset.append(event.version)
                        if not t.new_champion_version:
                            t.new_champion_version = event.version
                            t.new_champion_registered = time.time()
                            # Inference may swap before this thread reads the event: then the
                            # version has served already, and that first prediction is the moment.
                            t.first_served_by_new_champion = t.first_served.get(event.version)
                self._stats.champion_version = event.version

    def _on_feedback(self, label: feedback_pb2.FeedbackLabel) -> None:
        key = (label.entity_id, label.event_id)
        with self._stats.lock:
            found = self._stats.predicted.pop(key, None)
            if found is None:
                return
            predicted, version = found
            self._stats.phase_pairs.setdefault(self._phase(), []).append((predicted, label.label))
            self._stats.version_pairs.setdefault(version, []).append((predicted, label.label))
