"""Live model performance from joined labels, and the degradation events it earns.

Per (model name, version, role) the tracker keeps the last ``window`` joined labels and computes
accuracy, precision, recall, F1 and ROC AUC (``sklearn.metrics.roc_auc_score`` on the scores) over
them, plus the mean label lag. A metric that cannot be computed is NaN: precision without a
predicted positive, recall without a positive label, AUC with one class only.

A degradation is due when the configured metric over the window (at least ``min_labels`` labels)
is below ``threshold``, or one of the ``also`` metrics below its floor, for a version serving as
champion (role "champion", or no role), and ``cooldown_s`` has passed since the last one for that
version: while performance stays bad, one degradation per cooldown, naming the first metric
found low. Precision rests on the model's positive decisions only, a few dozen in a window when
positives are rare (2 of 7 is 0.29, with a 95% interval reaching 0.71), so it is judged only over
at least ``min_flagged`` of them. Time is passed in.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from driftline.services.drift.feedback import JoinedLabel

METRICS = ("accuracy", "precision", "recall", "f1", "auc")
#: Roles whose degradation is the champion's: the ones a retrain should act on.
CHAMPION_ROLES = frozenset({"", "champion"})

VersionKey = tuple[str, int, str]


@dataclass(frozen=True)
class Performance:
    model_name: str
    model_version: int
    role: str
    labelled: int
    #: Positive decisions in the window: what precision rests on.
    flagged: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    auc: float
    #: Mean label lag over the window, seconds (NaN when no label had a time).
    label_lag_s: float

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class Degradation:
    event_id: str
    model_name: str
    model_version: int
    metric: str
    value: float
    threshold: float
    labelled_count: int
    detected_at: float


def compute(labels: np.ndarray, decisions: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and AUC of decisions/scores against 0/1 labels."""
    n = len(labels)
    if n == 0:
        return dict.fromkeys(METRICS, math.nan)
    tp = int(np.sum((decisions == 1) & (labels == 1)))
    fp = int(np.sum((decisions == 1) & (labels == 0)))
    fn = int(np.sum((decisions == 0) & (labels == 1)))
    accuracy = float(np.mean(decisions == labels))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    finite = np.isfinite(scores)
    both_classes = len(np.unique(labels[finite])) == 2
    auc = float(roc_auc_score(labels[finite], scores[finite])) if both_classes else math.nan
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1, "auc": auc}


@dataclass
class _Window:
    labels: deque[int]
    decisions: deque[int]
    scores: deque[float]
    lags: deque[float]
    total: int = 0
    last_degradation: float | None = None


@dataclass(frozen=True)
class PerformancePolicy:
    window: int = 500
    min_labels: int = 200
    metric: str = "accuracy"
    threshold: float = 0.9
    cooldown_s: float = 300.0
    #: Versions kept at most (the oldest touched is forgotten first).
    max_versions: int = 20
    #: Further (metric, floor) pairs watched beside ``metric``: a ranking metric such as AUC can
    #: stay high while the model's decision threshold flags too much, which precision shows.
    also: tuple[tuple[str, float], ...] = ()
    #: Positive decisions needed before a precision floor is judged.
    min_flagged: int = 10

    def __post_init__(self) -> None:
        for metric, _ in self.floors:
            if metric not in METRICS:
                raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        if self.window < 1 or not 1 <= self.min_labels <= self.window:
            raise ValueError("need 1 <= min_labels <= window")
        if not 1 <= self.min_flagged <= self.window:
            raise ValueError("need 1 <= min_flagged <= window")

    @property
    def floors(self) -> tuple[tuple[str, float], ...]:
        """Every (metric, floor) watched, the configured metric first."""
        return ((self.metric, self.threshold), *self.also)


class PerformanceTracker:
    """Sliding-window metrics per model version and role, and degradations due."""

    def __init__(self, policy: PerformancePolicy, *, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self._windows: dict[VersionKey, _Window] = {}
        self._touched: set[VersionKey] = set()

    def add(self, joined: Iterable[JoinedLabel]) -> None:
        for item in joined:
            p = item.prediction
            key = (p.model_name, p.model_version, p.role)
            window = self._windows.get(key)
            if window is None:
                size = self.policy.window
                window = _Window(
                    deque(maxlen=size), deque(maxlen=size), deque(maxlen=size), deque(maxlen=size)
                )
                self._windows[key] = window
                self._forget_old()
            window.labels.append(item.label)
            window.decisions.append(int(p.label))
            window.scores.append(float(p.score))
            window.lags.append(item.lag_s)
            window.total += 1
            self._touched.add(key)

    def _forget_old(self) -> None:
        while len(self._windows) > self.policy.max_versions:
            oldest = next(iter(self._windows))
            del self._windows[oldest]
            self._touched.discard(oldest)

    def performance(self, key: VersionKey) -> Performance:
        window = self._windows[key]
        labels = np.fromiter(window.labels, dtype=int, count=len(window.labels))
        decisions = np.fromiter(window.decisions, dtype=int, count=len(window.decisions))
        scores = np.fromiter(window.scores, dtype=float, count=len(window.scores))
        lags = np.fromiter(window.lags, dtype=float, count=len(window.lags))
        finite_lags = lags[np.isfinite(lags)]
        values = compute(labels, decisions, scores)
        return Performance(
            model_name=key[0],
            model_version=key[1],
            role=key[2],
            labelled=len(labels),
            flagged=int(decisions.sum()),
            label_lag_s=float(finite_lags.mean()) if finite_lags.size else math.nan,
            **values,
        )

    def evaluate(self) -> tuple[list[Performance], list[Degradation]]:
        """Metrics of the versions that got labels since the last call, and degradations due."""
        now = self._clock()
        performances, degradations = [], []
        for key in sorted(self._touched):
            if key not in self._windows:
                continue
            performance = self.performance(key)
            performances.append(performance)
            degradation = self._check(key, performance, now)
            if degradation is not None:
                degradations.append(degradation)
        self._touched.clear()
        return performances, degradations

    def _check(self, key: VersionKey, performance: Performance, now: float) -> Degradation | None:
        policy = self.policy
        if key[2] not in CHAMPION_ROLES or performance.labelled < policy.min_labels:
            return None
        low = [
            (metric, value, floor)
            for metric, floor in policy.floors
            if math.isfinite(value := performance.metric(metric))
            and value < floor
            and (metric != "precision" or performance.flagged >= policy.min_flagged)
        ]
        if not low:
            return None
        metric, value, floor = low[0]
        window = self._windows[key]
        if window.last_degradation is not None and now - window.last_degradation < policy.cooldown_s:
            return None
        window.last_degradation = now
        return Degradation(
            event_id=str(uuid.uuid4()),
            model_name=key[0],
            model_version=key[1],
            metric=metric,
            value=value,
            threshold=floor,
            labelled_count=performance.labelled,
            detected_at=now,
        )
