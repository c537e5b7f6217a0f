from __future__ import annotations

import pytest

from driftline.services.ingestion.contract import Reason, Violation
from driftline.services.ingestion.quality import QualityWindow


def test_rates_count_null_invalid_and_out_of_range_per_field() -> None:
    window = QualityWindow(["a", "b"], window=100)
    window.observe([Violation("a", Reason.MISSING_FIELD, "")])
    window.observe([Violation("a", Reason.WRONG_TYPE, ""), Violation("b", Reason.NOT_IN_ENUM, "")])
    window.observe([Violation("b", Reason.EVENT_TIME_TOO_OLD, ""), Violation(None, Reason.UNKNOWN_FIELD, "")])
    window.observe([])
    snap = window.snapshot()
    assert window.events == 4
    assert (snap["a"].null_rate, snap["a"].invalid_rate, snap["a"].out_of_range_rate) == (0.25, 0.25, 0.0)
    assert (snap["b"].null_rate, snap["b"].invalid_rate, snap["b"].out_of_range_rate) == (0.0, 0.0, 0.5)


def test_an_empty_window_reports_zero() -> None:
    snap = QualityWindow(["a"]).snapshot()
    assert snap["a"].null_rate == 0.0


def test_the_window_slides_and_old_events_fall_out() -> None:
    window = QualityWindow(["a"], window=100, blocks=10)
    for _ in range(100):
        window.observe([Violation("a", Reason.MISSING_FIELD, "")])
    assert window.snapshot()["a"].null_rate == 1.0
    for _ in range(200):
        window.observe([])
    assert window.events <= 100
    assert window.snapshot()["a"].null_rate == 0.0
    for _ in range(50):
        window.observe([Violation("a", Reason.OUT_OF_RANGE, "")])
    assert 0.45 <= window.snapshot()["a"].out_of_range_rate <= 0.6


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        QualityWindow(["a"], window=0)


@pytest.mark.parametrize("count", [0, 1, 9, 10, 25, 250])
def test_valid_events_recorded_at_once_count_as_recorded_one_by_one(count: int) -> None:
    one_by_one, at_once = QualityWindow(["a"], window=100), QualityWindow(["a"], window=100)
    for window in (one_by_one, at_once):
        for _ in range(7):
            window.observe([Violation("a", Reason.MISSING_FIELD, "")])
    for _ in range(count):
        one_by_one.observe([])
    at_once.observe_valid(count)
    assert at_once.events == one_by_one.events
    assert at_once.snapshot() == one_by_one.snapshot()
