"""Live metrics math and performance degradations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftline.services.drift.feedback import JoinedLabel, PredictionRecord
from driftline.services.drift.performance import PerformancePolicy, PerformanceTracker, compute


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    decisions = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.35])
    m = compute(labels, decisions, scores)
    # tp=2 fp=1 fn=1 tn=4
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # Positive scores 0.9, 0.8, 0.3 against 5 negatives: 0.9 and 0.8 beat all, 0.3 beats 0.2 and 0.1.
    assert m["auc"] == pytest.approx((5 + 5 + 2) / 15)


def test_undefined_metrics_are_nan_not_errors() -> None:
    m = compute(np.zeros(4, dtype=int), np.zeros(4, dtype=int), np.full(4, 0.1))
    assert m["accuracy"] == 1.0
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1", "auc"))
    assert all(math.isnan(v) for v in compute(np.array([]), np.array([]), np.array([])).values())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _joined(
    label: int, decision: int, *, version: int = 1, role: str = "champion", lag: float = 2.0
) -> JoinedLabel:
    prediction = PredictionRecord(
        "p", "e", "ev", "fraud", version, 0.9 if decision else 0.1, decision, 0.0, role
    )
    return JoinedLabel(prediction, label, "f", lag)


POLICY = PerformancePolicy(window=10, min_labels=5, metric="accuracy", threshold=0.8, cooldown_s=60)


def test_a_degradation_is_raised_when_accuracy_over_the_window_drops_below_the_threshold() -> None:
    clock = Clock()
    tracker = PerformanceTracker(POLICY, clock=clock)
    tracker.add([_joined(1, 1)] * 4)
    assert tracker.evaluate()[1] == []  # too few labels yet
    tracker.add([_joined(1, 0)] * 2)
    performances, degradations = tracker.evaluate()
    assert performances[0].accuracy == pytest.approx(4 / 6)
    assert performances[0].label_lag_s == 2.0
    [d] = degradations
    assert (d.model_name, d.model_version, d.metric, d.threshold, d.labelled_count) == (
        "fraud",
        1,
        "accuracy",
        0.8,
        6,
    )
    assert d.value == pytest.approx(4 / 6)


def test_degradations_respect_the_cooldown_and_repeat_while_performance_stays_bad() -> None:
    clock = Clock()
    tracker = PerformanceTracker(POLICY, clock=clock)
    tracker.add([_joined(1, 0)] * 6)
    assert len(tracker.evaluate()[1]) == 1
    clock.now = 30
    tracker.add([_joined(1, 0)])
    assert tracker.evaluate()[1] == []
    clock.now = 61
    tracker.add([_joined(1, 0)])
    assert len(tracker.evaluate()[1]) == 1


def test_the_window_slides_so_recovered_performance_stops_degradations() -> None:
    clock = Clock()
    tracker = PerformanceTracker(POLICY, clock=clock)
    tracker.add([_joined(1, 0)] * 10)
    assert tracker.evaluate()[1]
    clock.now = 1000
    tracker.add([_joined(1, 1)] * 10)
    performances, degradations = tracker.evaluate()
    assert performances[0].accuracy == 1.0
    assert performances[0].labelled == 10
    assert degradations == []


def test_only_the_champion_raises_degradations_but_every_version_is_measured() -> None:
    tracker = PerformanceTracker(POLICY, clock=Clock())
    tracker.add([_joined(1, 0, version=2, role="shadow")] * 6)
    performances, degradations = tracker.evaluate()
    assert [(p.model_version, p.role) for p in performances] == [(2, "shadow")]
    assert degradations == []


def test_an_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError):
        PerformancePolicy(metric="vibes")
