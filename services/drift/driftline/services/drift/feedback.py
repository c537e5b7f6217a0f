"""Joins ground-truth labels to logged predictions: late labels, duplicates and unknown ids.

A label names its prediction by ``prediction_id``, or by ``(entity_id, event_id)``; the latter
matches every prediction logged for that event (champion, challenger, shadow), each of which is
joined to it once. The rules:

* **each prediction is joined at most once**: the first label wins; a later, different label for
  the same prediction is counted as ``duplicate_prediction`` and ignored;
* **duplicates** of a label (same ``feedback_id``, e.g. a replayed Kafka message) are counted as
  ``duplicate_feedback`` and ignored;
* **late labels**: a label can arrive before its prediction has been consumed (two topics, no
  ordering between them). Labels are kept for ``horizon_s``; a prediction arriving within that
  time is joined to the labels waiting for it. Predictions are kept for ``horizon_s`` too, so a
  label may come up to ``horizon_s`` after its prediction;
* **unknown ids**: a label that found no prediction within ``horizon_s`` is counted ``unknown``
  when it expires.

Time is processing time from an injected clock (seconds): horizons are about how long this
process waits, which also works for replayed history whose event times are old. ``lag_s`` of a
joined label is event time: label time minus prediction time.

State is in memory and bounded: at most ``max_predictions`` predictions and ``max_labels``
labels (oldest evicted first; an evicted label that never matched counts as ``unknown``) and
``max_feedback_ids`` remembered feedback ids. A restart forgets it: labels for predictions made
before the restart then count as unknown.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from driftline.services.drift.errors import InvalidFeedback

JOINED = "joined"
PENDING = "pending"
DUPLICATE_FEEDBACK = "duplicate_feedback"
DUPLICATE_PREDICTION = "duplicate_prediction"
UNKNOWN = "unknown"
DUPLICATE_LOG = "duplicate_prediction_log"

_EventKey = tuple[str, str]
_K = TypeVar("_K")


@dataclass(frozen=True)
class PredictionRecord:
    prediction_id: str
    entity_id: str
    event_id: str
    model_name: str
    model_version: int
    score: float
    label: int
    #: Epoch seconds.
    predicted_at: float
    role: str = ""


@dataclass(frozen=True)
class LabelRecord:
    feedback_id: str
    label: int
    prediction_id: str = ""
    entity_id: str = ""
    event_id: str = ""
    #: Epoch seconds; NaN when the producer did not say.
    label_time: float = float("nan")

    def validate(self) -> None:
        if self.label not in (0, 1):
            raise InvalidFeedback(f"label must be 0 or 1, got {self.label}", code="bad_label")
        if not self.prediction_id and not (self.entity_id and self.event_id):
            raise InvalidFeedback("set prediction_id, or entity_id and event_id", code="no_key")


@dataclass(frozen=True)
class JoinedLabel:
    prediction: PredictionRecord
    label: int
    feedback_id: str
    #: Label time minus prediction time, in seconds (NaN when the label has no time).
    lag_s: float


@dataclass
class _Prediction:
    record: PredictionRecord
    received_at: float
    joined: bool = False


@dataclass
class _Label:
    record: LabelRecord
    received_at: float
    matched: bool = False
    kept: bool = False


@dataclass
class JoinResult:
    outcome: str
    joined: list[JoinedLabel] = field(default_factory=list)


class FeedbackJoiner:
    """In-memory, bounded join of labels to predictions (see the module docstring)."""

    def __init__(
        self,
        *,
        horizon_s: float = 3600.0,
        max_predictions: int = 200_000,
        max_labels: int = 100_000,
        max_feedback_ids: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if horizon_s <= 0:
            raise ValueError("horizon_s must be positive")
        self.horizon_s = horizon_s
        self._max_predictions = max_predictions
        self._max_labels = max_labels
        self._max_feedback_ids = max_feedback_ids
        self._clock = clock
        self._predictions: OrderedDict[str, _Prediction] = OrderedDict()
        self._by_event: dict[_EventKey, list[str]] = {}
        self._labels: OrderedDict[int, _Label] = OrderedDict()
        self._labels_by_prediction: dict[str, list[int]] = {}
        self._labels_by_event: dict[_EventKey, list[int]] = {}
        self._feedback_ids: OrderedDict[str, float] = OrderedDict()
        self._next_label = 0
        self._unmatched = 0
        self.counts: Counter[str] = Counter()

    # -- predictions -----------------------------------------------------------------------
    def add_prediction(self, record: PredictionRecord) -> list[JoinedLabel]:
        """Remember a logged prediction; returns the labels that were waiting for it, joined."""
        now = self._clock()
        self._expire(now)
        if record.prediction_id in self._predictions:
            self.counts[DUPLICATE_LOG] += 1
            return []
        entry = _Prediction(record, now)
        self._predictions[record.prediction_id] = entry
        if record.entity_id and record.event_id:
            self._by_event.setdefault((record.entity_id, record.event_id), []).append(record.prediction_id)
        while len(self._predictions) > self._max_predictions:
            self._drop_prediction(next(iter(self._predictions)))
        waiting = list(self._labels_by_prediction.get(record.prediction_id, ()))
        if record.entity_id and record.event_id:
            waiting += self._labels_by_event.get((record.entity_id, record.event_id), [])
        joined = []
        for label_no in waiting:
            label = self._labels.get(label_no)
            if label is None or entry.joined:
                continue
            joined.append(self._join(entry, label))
        return joined

    # -- labels ----------------------------------------------------------------------------
    def add_label(self, record: LabelRecord) -> JoinResult:
        """Join a label to its predictions, or keep it waiting; raises InvalidFeedback if unusable."""
        record.validate()
        now = self._clock()
        self._expire(now)
        if record.feedback_id:
            if record.feedback_id in self._feedback_ids:
                self.counts[DUPLICATE_FEEDBACK] += 1
                return JoinResult(DUPLICATE_FEEDBACK)
            self._feedback_ids[record.feedback_id] = now
            while len(self._feedback_ids) > self._max_feedback_ids:
                self._feedback_ids.popitem(last=False)
        label = _Label(record, now)
        targets = self._targets(record)
        joined = [self._join(p, label) for p in targets if not p.joined]
        if targets and not joined:
            self.counts[DUPLICATE_PREDICTION] += 1
            return JoinResult(DUPLICATE_PREDICTION)
        # Kept for the horizon in any case: another prediction of the same event may still come.
        self._keep(label)
        if joined:
            return JoinResult(JOINED, joined)
        self.counts[PENDING] += 1
        return JoinResult(PENDING)

    def _targets(self, record: LabelRecord) -> list[_Prediction]:
        if record.prediction_id:
            found = self._predictions.get(record.prediction_id)
            return [found] if found is not None else []
        ids = self._by_event.get((record.entity_id, record.event_id), [])
        return [self._predictions[i] for i in ids if i in self._predictions]

    def _join(self, prediction: _Prediction, label: _Label) -> JoinedLabel:
        prediction.joined = True
        if label.kept and not label.matched:
            self._unmatched -= 1
        label.matched = True
        self.counts[JOINED] += 1
        lag = label.record.label_time - prediction.record.predicted_at
        return JoinedLabel(prediction.record, label.record.label, label.record.feedback_id, lag)

    def _keep(self, label: _Label) -> None:
        number = self._next_label
        self._next_label += 1
        self._labels[number] = label
        label.kept = True
        if not label.matched:
            self._unmatched += 1
        record = label.record
        if record.prediction_id:
            self._labels_by_prediction.setdefault(record.prediction_id, []).append(number)
        else:
            self._labels_by_event.setdefault((record.entity_id, record.event_id), []).append(number)
        while len(self._labels) > self._max_labels:
            self._drop_label(next(iter(self._labels)))

    # -- expiry ----------------------------------------------------------------------------
    def expire(self) -> int:
        """Drop what is older than the horizon; returns how many labels expired unknown."""
        before = self.counts[UNKNOWN]
        self._expire(self._clock())
        return self.counts[UNKNOWN] - before

    def _expire(self, now: float) -> None:
        cutoff = now - self.horizon_s
        while self._predictions:
            first_id, first = next(iter(self._predictions.items()))
            if first.received_at > cutoff:
                break
            self._drop_prediction(first_id)
        while self._labels:
            number, label = next(iter(self._labels.items()))
            if label.received_at > cutoff:
                break
            self._drop_label(number)
        while self._feedback_ids:
            feedback_id, seen_at = next(iter(self._feedback_ids.items()))
            # Twice the horizon: a duplicate can only matter while its label could still join.
            if seen_at > now - 2 * self.horizon_s:
                break
            del self._feedback_ids[feedback_id]

    def _drop_prediction(self, prediction_id: str) -> None:
        entry = self._predictions.pop(prediction_id)
        record = entry.record
        key = (record.entity_id, record.event_id)
        ids = self._by_event.get(key)
        if ids is not None:
            ids.remove(prediction_id)
            if not ids:
                del self._by_event[key]

    def _drop_label(self, number: int) -> None:
        label = self._labels.pop(number)
        if not label.matched:
            self.counts[UNKNOWN] += 1
            self._unmatched -= 1
        record = label.record
        if record.prediction_id:
            _unindex(self._labels_by_prediction, record.prediction_id, number)
        else:
            _unindex(self._labels_by_event, (record.entity_id, record.event_id), number)

    # -- introspection ---------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Labels kept that have not matched any prediction yet."""
        return self._unmatched

    @property
    def predictions_held(self) -> int:
        return len(self._predictions)


def _unindex(index: dict[_K, list[int]], key: _K, number: int) -> None:
    numbers = index.get(key)
    if numbers is not None:
        numbers.remove(number)
        if not numbers:
            del index[key]
