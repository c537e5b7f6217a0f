"""Hysteresis and cooldown: reports follow lasting changes, not single windows."""

from __future__ import annotations

import pytest

from driftline.services.drift.detectors import Status
from driftline.services.drift.hysteresis import Hysteresis, HysteresisPolicy

D, N, INS = Status.DRIFT, Status.NO_DRIFT, Status.INSUFFICIENT_DATA


def _run(
    policy: HysteresisPolicy, verdicts: list[Status], *, step_s: float = 1.0
) -> list[tuple[int, Status]]:
    h = Hysteresis(policy)
    due = []
    for i, verdict in enumerate(verdicts):
        status = h.observe(verdict, i * step_s)
        if status is not None:
            due.append((i, status))
    return due


def test_drift_is_entered_only_after_consecutive_drifted_verdicts() -> None:
    policy = HysteresisPolicy(enter_after=2, exit_after=3, cooldown_s=0)
    assert _run(policy, [N, D, N, D, N, D, N]) == [(0, N)]
    assert _run(policy, [N, D, D, D]) == [(0, N), (2, D), (3, D)]


def test_drift_is_left_after_consecutive_clean_verdicts_and_reported_once() -> None:
    policy = HysteresisPolicy(enter_after=1, exit_after=3, cooldown_s=100)
    due = _run(policy, [D, N, N, D, N, N, N, N])
    assert due == [(0, D), (6, N)]


def test_cooldown_limits_drift_reports_and_reminds_while_drift_lasts() -> None:
    policy = HysteresisPolicy(enter_after=1, exit_after=1, cooldown_s=10)
    due = _run(policy, [D] * 25)
    assert due == [(0, D), (10, D), (20, D)]


def test_a_drift_after_a_confirmed_exit_is_a_new_episode_reported_at_once() -> None:
    # A false alarm at 1, gone by 4 (three clean verdicts), a real drift from 5: reported at
    # 6, within the cooldown of the false alarm's report, not 300 s later.
    policy = HysteresisPolicy(enter_after=2, exit_after=3, cooldown_s=300)
    due = _run(policy, [D, D, N, N, N, D, D, D, D])
    assert due == [(1, D), (4, N), (6, D)]


def test_clean_verdicts_short_of_an_exit_do_not_rearm() -> None:
    # Two clean verdicts do not end the drift (exit_after=3): the drift resumes as the same
    # episode, reminded only once the cooldown has passed.
    policy = HysteresisPolicy(enter_after=1, exit_after=3, cooldown_s=10)
    due = _run(policy, [D, N, N, D, D, D, D, D, D, D, D, D])
    assert due == [(0, D), (10, D)]


def test_a_drift_seen_gone_after_a_reset_rearms() -> None:
    h = Hysteresis(HysteresisPolicy(enter_after=1, exit_after=2, cooldown_s=100))
    assert h.observe(D, 0.0) is D
    h.reset()  # a retrain's new reference: the drift is gone against it
    assert h.observe(N, 1.0) is N
    assert h.observe(N, 2.0) is None
    assert h.observe(D, 3.0) is D


def test_insufficient_data_holds_a_drift_state() -> None:
    policy = HysteresisPolicy(enter_after=1, exit_after=2, cooldown_s=100)
    due = _run(policy, [D, INS, INS, INS, INS, N, N])
    assert due == [(0, D), (6, N)]


def test_insufficient_data_is_reported_after_it_persists() -> None:
    policy = HysteresisPolicy(enter_after=2, exit_after=3, cooldown_s=0)
    due = _run(policy, [N, INS, INS, N, INS, INS, INS, N])
    assert due == [(0, N), (6, INS), (7, N)]


def test_reset_forgets_the_state_but_not_the_cooldown() -> None:
    h = Hysteresis(HysteresisPolicy(enter_after=1, exit_after=1, cooldown_s=10))
    assert h.observe(D, 0.0) is D
    h.reset()
    assert h.state is Status.UNSPECIFIED
    assert h.observe(D, 5.0) is None
    assert h.observe(D, 11.0) is D


@pytest.mark.parametrize("kwargs", [{"enter_after": 0}, {"exit_after": 0}, {"cooldown_s": -1}])
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HysteresisPolicy(**kwargs)  # type: ignore[arg-type]


def test_unspecified_is_not_a_verdict() -> None:
    with pytest.raises(ValueError):
        Hysteresis(HysteresisPolicy()).observe(Status.UNSPECIFIED, 0.0)
