"""Feedback join: late labels, duplicates, unknown ids, and each prediction joined exactly once."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.services.drift.errors import InvalidFeedback
from driftline.services.drift.feedback import (
    DUPLICATE_FEEDBACK,
    DUPLICATE_LOG,
    DUPLICATE_PREDICTION,
    JOINED,
    PENDING,
    UNKNOWN,
    FeedbackJoiner,
    LabelRecord,
    PredictionRecord,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _prediction(
    pid: str,
    *,
    entity: str = "card-1",
    event: str = "",
    version: int = 1,
    role: str = "champion",
    at: float = 100.0,
) -> PredictionRecord:
    return PredictionRecord(pid, entity, event or f"ev-{pid}", "fraud", version, 0.9, 1, at, role)


def test_a_label_joins_its_prediction_by_prediction_id_with_its_lag() -> None:
    joiner = FeedbackJoiner(clock=Clock())
    joiner.add_prediction(_prediction("p1", at=100.0))
    result = joiner.add_label(LabelRecord("f1", 0, prediction_id="p1", label_time=130.0))
    assert result.outcome == JOINED
    [joined] = result.joined
    assert joined.prediction.prediction_id == "p1"
    assert joined.label == 0
    assert joined.lag_s == 30.0


def test_a_label_by_entity_and_event_joins_every_prediction_of_the_event_once() -> None:
    joiner = FeedbackJoiner(clock=Clock())
    joiner.add_prediction(_prediction("champ", event="ev-9", version=1, role="champion"))
    joiner.add_prediction(_prediction("shadow", event="ev-9", version=2, role="shadow"))
    joiner.add_prediction(_prediction("other", event="ev-10"))
    result = joiner.add_label(LabelRecord("f1", 1, entity_id="card-1", event_id="ev-9"))
    assert sorted(j.prediction.prediction_id for j in result.joined) == ["champ", "shadow"]
    assert math.isnan(result.joined[0].lag_s)


def test_a_late_arriving_prediction_joins_the_label_waiting_for_it() -> None:
    clock = Clock()
    joiner = FeedbackJoiner(horizon_s=60, clock=clock)
    assert joiner.add_label(LabelRecord("f1", 1, entity_id="card-1", event_id="ev-p1")).outcome == PENDING
    assert joiner.pending == 1
    clock.now = 59.0
    joined = joiner.add_prediction(_prediction("p1"))
    assert [j.prediction.prediction_id for j in joined] == ["p1"]
    assert joiner.pending == 0
    # A shadow prediction of the same event arriving later still gets the label.
    assert [
        j.prediction.prediction_id for j in joiner.add_prediction(_prediction("p1-shadow", event="ev-p1"))
    ] == ["p1-shadow"]


def test_a_label_whose_prediction_never_comes_is_counted_unknown_after_the_horizon() -> None:
    clock = Clock()
    joiner = FeedbackJoiner(horizon_s=60, clock=clock)
    joiner.add_label(LabelRecord("f1", 1, prediction_id="nope"))
    clock.now = 59.0
    assert joiner.expire() == 0
    clock.now = 61.0
    assert joiner.expire() == 1
    assert joiner.counts[UNKNOWN] == 1
    assert joiner.pending == 0
    assert joiner.add_prediction(_prediction("nope")) == []


def test_a_prediction_older_than_the_horizon_no_longer_joins() -> None:
    clock = Clock()
    joiner = FeedbackJoiner(horizon_s=60, clock=clock)
    joiner.add_prediction(_prediction("p1"))
    clock.now = 61.0
    assert joiner.add_label(LabelRecord("f1", 1, prediction_id="p1")).outcome == PENDING
    assert joiner.predictions_held == 0


def test_duplicate_feedback_ids_and_second_labels_for_a_prediction_are_ignored() -> None:
    joiner = FeedbackJoiner(clock=Clock())
    joiner.add_prediction(_prediction("p1"))
    assert joiner.add_label(LabelRecord("f1", 1, prediction_id="p1")).outcome == JOINED
    assert joiner.add_label(LabelRecord("f1", 1, prediction_id="p1")).outcome == DUPLICATE_FEEDBACK
    # A different label for the same prediction: the first one wins.
    second = joiner.add_label(LabelRecord("f2", 0, entity_id="card-1", event_id="ev-p1"))
    assert second.outcome == DUPLICATE_PREDICTION
    assert second.joined == []
    assert joiner.counts[JOINED] == 1


def test_a_replayed_prediction_log_is_not_joined_twice() -> None:
    joiner = FeedbackJoiner(clock=Clock())
    joiner.add_prediction(_prediction("p1"))
    joiner.add_label(LabelRecord("f1", 1, prediction_id="p1"))
    assert joiner.add_prediction(_prediction("p1")) == []
    assert joiner.counts[DUPLICATE_LOG] == 1


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (LabelRecord("f", 1), "no_key"),
        (LabelRecord("f", 1, entity_id="card-1"), "no_key"),
        (LabelRecord("f", 2, prediction_id="p"), "bad_label"),
        (LabelRecord("f", -1, prediction_id="p"), "bad_label"),
    ],
)
def test_labels_that_can_never_join_are_refused(record: LabelRecord, code: str) -> None:
    with pytest.raises(InvalidFeedback) as err:
        FeedbackJoiner(clock=Clock()).add_label(record)
    assert err.value.code == code


def test_memory_is_bounded_and_evicted_labels_count_as_unknown() -> None:
    joiner = FeedbackJoiner(max_predictions=3, max_labels=2, clock=Clock())
    for i in range(5):
        joiner.add_prediction(_prediction(f"p{i}"))
    assert joiner.predictions_held == 3
    for i in range(3):
        joiner.add_label(LabelRecord(f"f{i}", 1, prediction_id=f"missing{i}"))
    assert joiner.counts[UNKNOWN] == 1
    assert joiner.pending == 2


@settings(max_examples=60, deadline=None)
@given(
    n_predictions=st.integers(1, 12),
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(0, 3),
    by_event=st.booleans(),
)
def test_every_prediction_is_joined_exactly_once_whatever_the_order_and_duplicates(
    n_predictions: int, order: object, duplicates: int, by_event: bool
) -> None:
    """Predictions and labels (with replays) interleave arbitrarily within the horizon."""
    clock = Clock()
    joiner = FeedbackJoiner(horizon_s=1e9, clock=clock)
    events: list[tuple[str, object]] = [("p", _prediction(f"p{i}")) for i in range(n_predictions)]
    labels = [
        LabelRecord(f"f{i}", i % 2, entity_id="card-1", event_id=f"ev-p{i}")
        if by_event
        else LabelRecord(f"f{i}", i % 2, prediction_id=f"p{i}")
        for i in range(n_predictions)
    ]
    events += [("l", label) for label in labels]
    events += [("l", labels[k % n_predictions]) for k in range(duplicates)]
    order.shuffle(events)  # type: ignore[attr-defined]
    joined: list[str] = []
    for kind, item in events:
        clock.now += 1
        if kind == "p":
            joined += [j.prediction.prediction_id for j in joiner.add_prediction(item)]  # type: ignore[arg-type]
        else:
            joined += [j.prediction.prediction_id for j in joiner.add_label(item).joined]  # type: ignore[arg-type]
    assert sorted(joined) == sorted(f"p{i}" for i in range(n_predictions))
    assert joiner.counts[DUPLICATE_FEEDBACK] == duplicates
    assert joiner.pending == 0
