"""The drift monitor: reference loading, report contents, hysteresis per detector."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.services.drift.alibi_backend import AlibiDetectorFactory
from driftline.services.drift.detectors import FeatureKind, OnlineConfig, Status, Stream, WindowConfig
from driftline.services.drift.errors import InvalidReference
from driftline.services.drift.fakes import ScriptedFactory
from driftline.services.drift.hysteresis import HysteresisPolicy
from driftline.services.drift.monitor import (
    DECISION,
    SCORE,
    DriftMonitor,
    MonitorConfig,
    Reference,
    reference_from_arrays,
    restarting_features,
)

POLICY = HysteresisPolicy(enter_after=2, exit_after=2, cooldown_s=60)
CONFIG = MonitorConfig(window_policy=POLICY, online_policy=POLICY)


def _reference(version: int = 1, *, scores: bool = True) -> Reference:
    rng = np.random.default_rng(version)
    values = np.column_stack([rng.random(100), rng.integers(0, 2, 100)])
    return reference_from_arrays(
        "fraud",
        version,
        ["a", "flag"],
        values,
        rng.random(100) if scores else None,
        decision_threshold=0.7,
    )


def test_reports_name_the_model_version_detector_stream_and_events_seen() -> None:
    factory = ScriptedFactory()
    monitor = DriftMonitor(CONFIG, factory, clock=lambda: 1000.0)
    assert monitor.load(_reference(3)) == []
    rows = np.array([[0.1, 0], [0.2, 1], [0.9, 0], [0.8, 0], [0.95, 1]])
    reports = monitor.observe_features(rows, np.arange(5.0) + 100)
    assert [(r.status, r.events_seen) for r in reports] == [(Status.NO_DRIFT, 1), (Status.DRIFT, 4)]
    drift = reports[1]
    assert (drift.model_name, drift.model_version, drift.detector, drift.stream) == (
        "fraud",
        3,
        "window",
        "features",
    )
    assert drift.features[0].feature == "a"
    assert drift.features[0].drifted
    assert drift.window_start == 103.0
    assert drift.detected_at == 1000.0
    assert drift.report_id


def test_feature_rows_are_aligned_by_name_and_missing_features_are_nan() -> None:
    monitor = DriftMonitor(CONFIG, ScriptedFactory())
    monitor.load(_reference())
    row = monitor.feature_row({"flag": 1.0, "unknown": 5.0})
    assert np.isnan(row[0])
    assert row[1] == 1.0


def test_the_prediction_stream_watches_scores_and_decisions_at_the_versions_threshold() -> None:
    factory = ScriptedFactory()
    monitor = DriftMonitor(CONFIG, factory)
    monitor.load(_reference())
    stream, reference, specs = factory.builds[1]
    assert stream is Stream.PREDICTIONS
    assert [s.name for s in specs] == [SCORE, DECISION]
    assert specs[1].kind is FeatureKind.BINARY
    np.testing.assert_array_equal(reference[:, 1], (reference[:, 0] >= 0.7).astype(float))
    monitor.observe_predictions(np.array([0.69, 0.71]), np.array([1.0, 2.0]))
    seen = factory.detectors[Stream.PREDICTIONS].rows_seen
    assert [list(r) for r in seen] == [[0.69, 0.0], [0.71, 1.0]]


def test_a_new_version_rebuilds_detectors_and_a_known_one_reuses_its_calibration() -> None:
    factory = ScriptedFactory()
    monitor = DriftMonitor(CONFIG, factory)
    monitor.load(_reference(1))
    monitor.load(_reference(2))
    assert len(factory.builds) == 4
    monitor.observe_features(np.array([[0.9, 0.0]]), np.array([0.0]))
    monitor.load(_reference(1))  # rollback: cached
    assert len(factory.builds) == 4
    assert monitor.version == 1
    assert monitor.events_seen[Stream.FEATURES] == 0


def test_loading_resets_hysteresis_so_the_new_version_starts_clean() -> None:
    monitor = DriftMonitor(CONFIG, ScriptedFactory())
    monitor.load(_reference(1))
    monitor.observe_features(np.array([[0.9, 0.0]] * 3), np.arange(3.0))
    assert monitor.states()[("features", "window")] is Status.DRIFT
    monitor.load(_reference(2))
    assert monitor.states()[("features", "window")] is Status.UNSPECIFIED


def test_a_reference_without_scores_reports_the_prediction_stream_unwatched() -> None:
    monitor = DriftMonitor(CONFIG, ScriptedFactory())
    reports = monitor.load(_reference(scores=False))
    assert [(r.stream, r.status) for r in reports] == [("predictions", Status.INSUFFICIENT_DATA)]
    assert monitor.observe_predictions(np.array([0.5]), np.array([0.0])) == []


def test_unload_reports_insufficient_data_and_stops_watching() -> None:
    monitor = DriftMonitor(CONFIG, ScriptedFactory())
    monitor.load(_reference())
    reports = monitor.unload("alias deleted")
    assert {(r.stream, r.status) for r in reports} == {
        ("features", Status.INSUFFICIENT_DATA),
        ("predictions", Status.INSUFFICIENT_DATA),
    }
    assert monitor.version is None
    assert monitor.observe_features(np.array([[0.9, 0.0]]), np.array([0.0])) == []


def test_rows_before_any_reference_are_ignored() -> None:
    monitor = DriftMonitor(CONFIG, ScriptedFactory())
    assert monitor.observe_features(np.array([[0.9, 0.0]]), np.array([0.0])) == []


def test_a_reference_whose_shape_does_not_match_its_names_is_refused() -> None:
    with pytest.raises(InvalidReference):
        reference_from_arrays("fraud", 1, ["a", "b", "c"], np.zeros((10, 2)))


def test_nan_and_constant_feature_streams_end_in_insufficient_data_reports() -> None:
    """End to end with alibi-detect: a broken upstream never crashes the monitor."""
    config = MonitorConfig(
        window=WindowConfig(size=50, step=50),
        online=OnlineConfig(ert=200, window_sizes=(10,), n_bootstraps=500, reference_size=200, eval_every=25),
        window_policy=HysteresisPolicy(enter_after=2, exit_after=2, cooldown_s=0),
        online_policy=HysteresisPolicy(enter_after=2, exit_after=2, cooldown_s=0),
        watch_predictions=False,
    )
    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.normal(size=300), (rng.random(300) < 0.3).astype(float)])
    monitor = DriftMonitor(config, AlibiDetectorFactory(), clock=lambda: 0.0)
    monitor.load(reference_from_arrays("fraud", 1, ["x", "flag"], reference))
    nan_reports = monitor.observe_features(np.full((150, 2), np.nan), np.arange(150.0))
    constant_reports = monitor.observe_features(np.full((150, 2), 1.0), np.arange(150.0))
    statuses = {(r.detector, r.status) for r in nan_reports + constant_reports}
    assert {s for _, s in statuses} == {Status.INSUFFICIENT_DATA}
    assert {d for d, _ in statuses} == {"window", "cvm-online", "fet-online"}


def _transactions_reference(rows: np.ndarray) -> Reference:
    from driftline.featurestore.definitions import TRANSACTION_FEATURES

    return reference_from_arrays(
        "fraud",
        1,
        TRANSACTION_FEATURES.feature_names,
        rows,
        feature_set=TRANSACTION_FEATURES.name,
        feature_set_version=TRANSACTION_FEATURES.version,
    )


def test_features_over_tumbling_windows_are_left_out_by_default() -> None:
    from driftline.featurestore.definitions import TRANSACTION_FEATURES

    assert restarting_features(TRANSACTION_FEATURES.name, TRANSACTION_FEATURES.version) == {"amount_sum_1m"}
    assert restarting_features("unknown", 1) == frozenset()
    factory = ScriptedFactory()
    monitor = DriftMonitor(CONFIG, factory)
    names = TRANSACTION_FEATURES.feature_names
    monitor.load(_transactions_reference(np.random.default_rng(0).random((50, len(names)))))
    kept = [n for n in names if n != "amount_sum_1m"]
    assert monitor.feature_names == tuple(kept)
    _, reference, specs = factory.builds[0]
    assert [s.name for s in specs] == kept
    assert reference.shape == (50, len(kept))
    # Rows are built from the kept columns: the left-out feature never reaches a detector.
    row = monitor.feature_row({"amount_sum_1m": 1e9, "amount": 2.0})
    assert row.shape == (len(kept),)
    assert row[kept.index("amount")] == 2.0
    assert 1e9 not in row


def test_the_left_out_features_can_be_named_or_none() -> None:
    from driftline.featurestore.definitions import TRANSACTION_FEATURES

    names = TRANSACTION_FEATURES.feature_names
    rows = np.random.default_rng(0).random((50, len(names)))
    everything = DriftMonitor(MonitorConfig(unwatched=frozenset()), ScriptedFactory())
    everything.load(_transactions_reference(rows))
    assert everything.feature_names == tuple(names)
    named = DriftMonitor(MonitorConfig(unwatched=frozenset({"amount", "is_foreign"})), ScriptedFactory())
    named.load(_transactions_reference(rows))
    assert "amount" not in named.feature_names
    assert "is_foreign" not in named.feature_names
    assert "amount_sum_1m" in named.feature_names


def test_a_restarting_feature_fails_windowed_tests_on_stationary_traffic_unless_left_out() -> None:
    """Why the default exists, on the real window test: a value that climbs through every aligned
    minute, sampled a few seconds at a time, against a reference spread over whole minutes."""
    rng = np.random.default_rng(7)

    def columns(times: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "steady": rng.normal(size=times.size),
            "sum_1m": (times % 60.0) * rng.lognormal(0.0, 0.3, times.size),  # grows through each minute
        }

    reference_columns = columns(rng.uniform(0, 3600, 2000))
    reference = reference_from_arrays(
        "fraud", 1, list(reference_columns), np.column_stack(list(reference_columns.values()))
    )
    times = np.arange(0, 600, 0.1)  # ten minutes of stationary traffic at 10 rows/s
    live = columns(times)
    every_drifted_window = HysteresisPolicy(enter_after=1, exit_after=1, cooldown_s=0)

    def drift_reports(unwatched: frozenset[str]) -> int:
        config = MonitorConfig(
            window=WindowConfig(size=200, step=100, p_value=0.001),
            window_policy=every_drifted_window,
            online_features=False,
            watch_predictions=False,
            unwatched=unwatched,
        )
        monitor = DriftMonitor(config, AlibiDetectorFactory())
        monitor.load(reference)
        rows = np.column_stack([live[name] for name in monitor.feature_names])
        return sum(r.status is Status.DRIFT for r in monitor.observe_features(rows, times))

    assert drift_reports(frozenset()) > 10
    assert drift_reports(frozenset({"sum_1m"})) == 0
