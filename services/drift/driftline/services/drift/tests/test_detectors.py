"""The alibi-detect backend: each detector on stationary and shifted data, and bad windows."""

from __future__ import annotations

import numpy as np
import pytest
from alibi_detect.cd import FETDriftOnline

from driftline.services.drift.alibi_backend import CHI2, KS, AlibiDetectorFactory, WindowTestDetector
from driftline.services.drift.alibi_online import (
    CVM_ONLINE,
    FET_ONLINE,
    CVMOnlineDetector,
    FETOnlineDetector,
    TabulatedFETDriftOnline,
)
from driftline.services.drift.detectors import (
    ALL_NAN,
    CONSTANT,
    REFERENCE_UNUSABLE,
    TINY,
    FeatureKind,
    FeatureSpec,
    OnlineConfig,
    Status,
    Stream,
    WindowConfig,
    infer_kinds,
)
from driftline.services.drift.evaluation import measure_detection_delay

NUM = FeatureSpec("x", FeatureKind.NUMERIC)
CAT = FeatureSpec("c", FeatureKind.CATEGORICAL)
BIN = FeatureSpec("b", FeatureKind.BINARY)
ONLINE = OnlineConfig(ert=200, window_sizes=(10, 25), n_bootstraps=1000, reference_size=200, eval_every=25)


def _mixed(
    rng: np.random.Generator, n: int, *, mean: float = 0.0, p: tuple[float, ...] = (0.5, 0.3, 0.2)
) -> np.ndarray:
    return np.column_stack([rng.normal(mean, 1.0, n), rng.choice(len(p), size=n, p=p).astype(float)])


def test_infer_kinds_tells_numeric_categorical_and_binary_apart() -> None:
    rng = np.random.default_rng(0)
    ref = np.column_stack(
        [rng.normal(size=200), rng.integers(0, 5, 200), rng.integers(0, 2, 200), rng.integers(0, 500, 200)]
    )
    kinds = [s.kind for s in infer_kinds(ref, ["a", "b", "c", "d"])]
    assert kinds == [FeatureKind.NUMERIC, FeatureKind.CATEGORICAL, FeatureKind.BINARY, FeatureKind.NUMERIC]
    forced = infer_kinds(ref, ["a", "b", "c", "d"], categorical=frozenset({"d"}))
    assert forced[3].kind is FeatureKind.CATEGORICAL


def test_window_test_is_quiet_on_stationary_data_and_flags_a_mean_shift() -> None:
    rng = np.random.default_rng(1)
    detector = WindowTestDetector(
        _mixed(rng, 2000), [NUM, CAT], WindowConfig(size=400, step=200, p_value=0.01)
    )
    quiet = detector.evaluate(_mixed(rng, 400))
    shifted = detector.evaluate(_mixed(rng, 400, mean=0.8))
    assert quiet.status is Status.NO_DRIFT
    assert shifted.status is Status.DRIFT
    assert shifted.drifted_features == ["x"]
    ks = shifted.features[0]
    assert ks.test == KS
    assert ks.p_value < ks.threshold == pytest.approx(0.01 / 2)


def test_window_test_uses_chi_square_for_categorical_features() -> None:
    rng = np.random.default_rng(2)
    detector = WindowTestDetector(_mixed(rng, 2000), [NUM, CAT], WindowConfig(size=400, step=200))
    verdict = detector.evaluate(_mixed(rng, 400, p=(0.2, 0.3, 0.5)))
    assert verdict.status is Status.DRIFT
    assert verdict.drifted_features == ["c"]
    assert verdict.features[1].test == CHI2


def test_window_test_evaluates_every_step_rows_once_the_window_is_full() -> None:
    rng = np.random.default_rng(3)
    detector = WindowTestDetector(_mixed(rng, 1000), [NUM, CAT], WindowConfig(size=100, step=50))
    rows = _mixed(rng, 300)
    verdicts = detector.update(rows, np.arange(300.0))
    # Full at row 100, then every 50 rows: rows 99, 149, 199, 249, 299.
    assert [v.row for v in verdicts] == [99, 149, 199, 249, 299]
    assert verdicts[-1].window_start == 200.0
    assert verdicts[-1].window_end == 299.0


@pytest.mark.parametrize(
    ("window", "note"),
    [
        (np.full((200, 2), np.nan), ALL_NAN),
        (np.column_stack([np.full(200, 3.0), np.full(200, 1.0)]), CONSTANT),
        (np.zeros((5, 2)) + np.arange(5).reshape(-1, 1), TINY),
        (np.empty((0, 2)), TINY),
    ],
    ids=["all-nan", "constant", "tiny", "empty"],
)
def test_bad_windows_are_insufficient_data_not_errors(window: np.ndarray, note: str) -> None:
    rng = np.random.default_rng(4)
    detector = WindowTestDetector(_mixed(rng, 500), [NUM, CAT], WindowConfig(min_samples=30))
    verdict = detector.evaluate(window)
    assert verdict.status is Status.INSUFFICIENT_DATA
    assert {s.note for s in verdict.features} == {note}
    assert "no feature could be tested" in verdict.reason


def test_a_nan_column_is_left_out_and_the_others_are_still_tested() -> None:
    rng = np.random.default_rng(5)
    detector = WindowTestDetector(_mixed(rng, 1000), [NUM, CAT], WindowConfig())
    window = _mixed(rng, 300, mean=1.0)
    window[:, 1] = np.nan
    verdict = detector.evaluate(window)
    assert verdict.status is Status.DRIFT
    assert verdict.features[1].note == ALL_NAN
    # Bonferroni over the one feature that could be tested.
    assert verdict.features[0].threshold == pytest.approx(WindowConfig().p_value)


def test_a_constant_reference_column_is_reported_unusable() -> None:
    rng = np.random.default_rng(6)
    reference = _mixed(rng, 500)
    reference[:, 0] = 7.0
    detector = WindowTestDetector(reference, [NUM, CAT], WindowConfig())
    verdict = detector.evaluate(_mixed(rng, 300))
    assert verdict.features[0].note == REFERENCE_UNUSABLE
    assert verdict.status is Status.NO_DRIFT


def test_cvm_online_flags_a_shift_from_the_second_verdict_on() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(600, 2))
    detector = CVMOnlineDetector(reference, [NUM, FeatureSpec("y", FeatureKind.NUMERIC)], ONLINE)
    detector.update(rng.normal(size=(50, 2)), np.arange(50.0))
    after = rng.normal(size=(200, 2)) + np.array([1.5, 0.0])
    verdicts = detector.update(after, np.arange(200.0))
    # From the second verdict after the shift on, every verdict is DRIFT, and on the shifted feature.
    assert all(v.status is Status.DRIFT and "x" in v.drifted_features for v in verdicts[1:])
    stat = verdicts[-1].features[0]
    assert stat.test == CVM_ONLINE
    assert stat.drifted
    assert stat.statistic > stat.threshold
    assert np.isnan(stat.p_value)


def test_fet_online_flags_a_change_in_the_rate_of_a_flag() -> None:
    rng = np.random.default_rng(8)
    reference = (rng.random((600, 1)) < 0.1).astype(float)
    detector = FETOnlineDetector(reference, [BIN], ONLINE)
    detector.update((rng.random((50, 1)) < 0.1).astype(float), np.arange(50.0))
    verdicts = detector.update((rng.random((200, 1)) < 0.6).astype(float), np.arange(200.0))
    assert all(v.status is Status.DRIFT for v in verdicts[1:])
    assert verdicts[-1].features[0].test == FET_ONLINE


def test_online_detectors_keep_a_bounded_history() -> None:
    rng = np.random.default_rng(9)
    detector = CVMOnlineDetector(rng.normal(size=(300, 1)), [NUM], ONLINE)
    detector.update(rng.normal(size=(600, 1)), np.arange(600.0))
    inner = detector._detector
    assert inner is not None
    assert len(inner.xs) <= max(ONLINE.window_sizes)
    assert len(inner.test_stats) == 1


def test_online_nan_rows_are_insufficient_and_missing_values_are_imputed() -> None:
    rng = np.random.default_rng(10)
    detector = CVMOnlineDetector(
        rng.normal(size=(300, 2)), [NUM, FeatureSpec("y", FeatureKind.NUMERIC)], ONLINE
    )
    all_nan = detector.update(np.full((25, 2), np.nan), np.arange(25.0))
    assert [v.status for v in all_nan] == [Status.INSUFFICIENT_DATA]
    assert {s.note for s in all_nan[0].features} == {ALL_NAN}
    rows = rng.normal(size=(75, 2))
    rows[:, 1] = np.nan
    verdicts = detector.update(rows, np.arange(75.0))
    assert all(v.features[1].note == ALL_NAN for v in verdicts)
    assert verdicts[-1].features[0].tested


def test_online_constant_block_is_insufficient() -> None:
    rng = np.random.default_rng(11)
    detector = CVMOnlineDetector(rng.normal(size=(300, 1)), [NUM], ONLINE)
    verdicts = detector.update(np.full((50, 1), 0.25), np.arange(50.0))
    assert {v.status for v in verdicts} == {Status.INSUFFICIENT_DATA}
    assert verdicts[-1].features[0].note == CONSTANT


def test_fet_treats_non_binary_values_as_missing() -> None:
    rng = np.random.default_rng(12)
    detector = FETOnlineDetector((rng.random((300, 1)) < 0.3).astype(float), [BIN], ONLINE)
    verdicts = detector.update(np.full((50, 1), 0.5), np.arange(50.0))
    assert verdicts
    assert all(v.status is not Status.DRIFT for v in verdicts)


def test_reference_without_both_classes_makes_fet_insufficient() -> None:
    detector = FETOnlineDetector(np.zeros((300, 1)), [BIN], ONLINE)
    verdicts = detector.update(np.ones((25, 1)), np.arange(25.0))
    assert verdicts[0].status is Status.INSUFFICIENT_DATA
    assert verdicts[0].features[0].note == REFERENCE_UNUSABLE


def test_factory_builds_the_detectors_the_feature_kinds_call_for() -> None:
    rng = np.random.default_rng(13)
    reference = np.column_stack([rng.normal(size=300), (rng.random(300) < 0.3).astype(float)])
    names = [
        d.name
        for d in AlibiDetectorFactory().build(
            Stream.FEATURES, reference, [NUM, BIN], window=WindowConfig(), online=ONLINE
        )
    ]
    assert names == ["window", CVM_ONLINE, FET_ONLINE]
    only_window = AlibiDetectorFactory().build(
        Stream.FEATURES, reference, [NUM, BIN], window=WindowConfig(), online=None
    )
    assert [d.name for d in only_window] == ["window"]


def test_mean_run_length_on_stationary_data_is_near_the_ert() -> None:
    """False alarms: over repeated stationary runs the mean run length targets the ERT.

    Run lengths of a calibrated detector are roughly geometric with mean ERT (standard deviation
    ERT as well), so the mean of 30 runs lies within ERT/2 .. 2*ERT but for a ~0.1% chance.
    """
    rng = np.random.default_rng(14)
    reference = rng.normal(size=(500, 1))
    stationary = rng.normal(size=(5000, 1))
    result = measure_detection_delay(
        reference, stationary, ert=50, window_sizes=(10,), n_bootstraps=2000, runs=30, max_events=2000
    )
    assert result.detected == 30
    assert 25 <= result.mean <= 100


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_tabulated_fet_gives_alibi_detects_thresholds_and_statistics(alternative: str) -> None:
    rng = np.random.default_rng(15)
    x_ref = (rng.random((200, 2)) < [0.1, 0.4]).astype(int)
    stream = (rng.random((120, 2)) < [0.25, 0.4]).astype(int)
    kwargs = {
        "ert": 100,
        "window_sizes": [5, 15],
        "n_bootstraps": 1500,
        "alternative": alternative,
        "verbose": False,
    }
    np.random.seed(3)
    original = FETDriftOnline(x_ref, **kwargs)
    np.random.seed(3)
    tabulated = TabulatedFETDriftOnline(x_ref, **kwargs)
    np.testing.assert_array_equal(original.thresholds, tabulated.thresholds)
    for row in stream:
        np.random.seed(0)
        a = original.predict(row)["data"]
        np.random.seed(0)
        b = tabulated.predict(row)["data"]
        np.testing.assert_array_equal(a["test_stat"], b["test_stat"])
        assert a["is_drift"] == b["is_drift"]


def test_fet_calibration_survives_the_case_where_alibi_detect_raises() -> None:
    """Short windows and rare flags: alibi-detect's keep-probability leaves [0, 1] and it raises."""
    x_ref = (np.random.default_rng(1).random((500, 3)) < 0.08).astype(int)
    kwargs = {
        "ert": 100,
        "window_sizes": [5, 10],
        "n_bootstraps": 2500,
        "alternative": "greater",
        "verbose": False,
    }
    np.random.seed(0)
    with pytest.raises(ValueError, match="p > 1"):
        FETDriftOnline(x_ref, **kwargs)
    np.random.seed(0)
    detector = TabulatedFETDriftOnline(x_ref, **kwargs)
    permits = detector.permit_probs[np.isfinite(detector.permit_probs)]
    assert ((permits >= 0) & (permits <= 1)).all()
    assert np.isfinite(detector.thresholds[9:]).all()
