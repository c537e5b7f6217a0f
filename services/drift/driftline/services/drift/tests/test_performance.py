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


def _scored(label: int, decision: int, score: float) -> JoinedLabel:
    """A champion's labelled prediction with its score."""
    prediction = PredictionRecord("p", "e", "ev", "fraud", 3, score, decision, 0.0, "champion")
    return JoinedLabel(prediction, label, "f", 1.0)


def _precision_policy(window: int) -> PerformancePolicy:
    return PerformancePolicy(
        window=window, min_labels=10, metric="auc", threshold=0.85, also=(("precision", 0.5),), min_flagged=6
    )


def test_a_champion_that_ranks_well_but_flags_too_much_is_degraded_on_precision() -> None:
    tracker = PerformanceTracker(_precision_policy(20), clock=Clock())

    # Every fraud scored above every legitimate event (AUC 1), but the threshold flags 6 of 8.
    frauds = [_scored(1, 1, 0.9)] * 2
    flagged = [_scored(0, 1, 0.6)] * 4
    cleared = [_scored(0, 0, 0.1)] * 4
    tracker.add([*frauds, *flagged, *cleared])
    [performance], [degradation] = tracker.evaluate()
    assert performance.auc == 1.0
    assert (degradation.metric, degradation.threshold) == ("precision", 0.5)
    assert degradation.value == pytest.approx(2 / 6)


def test_precision_over_too_few_fraud_verdicts_is_not_judged_until_there_are_enough() -> None:
    tracker = PerformanceTracker(_precision_policy(40), clock=Clock())

    # 1 of 4 fraud verdicts right: precision 0.25, but over 4 verdicts, below min_flagged.
    tracker.add([_scored(1, 1, 0.9), *[_scored(0, 1, 0.6)] * 3, *[_scored(0, 0, 0.1)] * 12])
    [performance], degradations = tracker.evaluate()
    assert (performance.flagged, performance.precision) == (4, 0.25)
    assert degradations == []
    tracker.add([_scored(0, 1, 0.6)] * 2)  # 6 verdicts now, 1 right
    [performance], [degradation] = tracker.evaluate()
    assert performance.flagged == 6
    assert (degradation.metric, degradation.value) == ("precision", pytest.approx(1 / 6))


def test_the_fraud_verdicts_needed_fit_the_window() -> None:
    with pytest.raises(ValueError, match="min_flagged"):
        PerformancePolicy(window=10, min_labels=5, min_flagged=11)


def test_the_configured_metric_is_named_first_when_several_are_low() -> None:
    policy = PerformancePolicy(
        window=10, min_labels=5, metric="accuracy", threshold=0.8, cooldown_s=60, also=(("precision", 0.9),)
    )
    tracker = PerformanceTracker(policy, clock=Clock())
    tracker.add([_joined(0, 1)] * 6)  # accuracy 0, precision 0
    [degradation] = tracker.evaluate()[1]
    assert degradation.metric == "accuracy"


def test_an_unknown_metric_among_the_floors_is_refused() -> None:
    with pytest.raises(ValueError, match="vibes"):
        PerformancePolicy(metric="auc", also=(("vibes", 0.5),))
