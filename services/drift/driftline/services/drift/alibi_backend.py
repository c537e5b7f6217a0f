"""The alibi-detect implementation of :mod:`detectors`.

* ``WindowTestDetector`` (here): per-feature two-sample tests on a sliding window, KS
  (``alibi_detect.cd.KSDrift``) for numeric features and chi-square (``TabularDrift`` with
  ``categories_per_feature``) for categorical ones, Bonferroni-corrected over the features that
  could be tested in that window.
* ``CVMOnlineDetector`` and ``FETOnlineDetector`` (``alibi_online``): ``CVMDriftOnline`` on numeric
  features and ``FETDriftOnline`` on binary ones, thresholds calibrated to an expected run time.
* ``AlibiDetectorFactory``: builds the ones a stream's feature kinds call for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import structlog
from alibi_detect.cd import KSDrift, TabularDrift

from driftline.services.drift.alibi_online import CVMOnlineDetector, FETOnlineDetector
from driftline.services.drift.detectors import (
    REFERENCE_UNUSABLE,
    Detector,
    FeatureKind,
    FeatureSpec,
    FeatureStat,
    OnlineConfig,
    Stream,
    Verdict,
    WindowConfig,
    column_problem,
    time_span,
    verdict_from_stats,
)

log = structlog.get_logger(__name__)

KS = "ks"
CHI2 = "chi2"


class _Ring:
    """The last ``size`` rows and their times, in a fixed array."""

    def __init__(self, size: int, width: int) -> None:
        self.rows = np.full((size, width), np.nan)
        self.times = np.full(size, np.nan)
        self.count = 0
        self._next = 0

    def append(self, row: np.ndarray, time: float) -> None:
        self.rows[self._next] = row
        self.times[self._next] = time
        self._next = (self._next + 1) % len(self.times)
        self.count = min(self.count + 1, len(self.times))

    @property
    def full(self) -> bool:
        return self.count == len(self.times)

    def clear(self) -> None:
        self.rows.fill(np.nan)
        self.times.fill(np.nan)
        self.count = 0
        self._next = 0


class WindowTestDetector:
    """KS / chi-square per feature on the last ``size`` rows, evaluated every ``step`` rows."""

    name = "window"

    def __init__(self, reference: np.ndarray, specs: Sequence[FeatureSpec], config: WindowConfig) -> None:
        if config.step < 1 or config.size < 1:
            raise ValueError("window size and step must be positive")
        self._columns = [j for j, spec in enumerate(specs) if spec.windowed]
        reference = np.asarray(reference, dtype=float)[:, self._columns]
        self._specs = [specs[j] for j in self._columns]
        self._config = config
        self._tests: list[KSDrift | TabularDrift | None] = []
        for j, spec in enumerate(self._specs):
            finite, problem = column_problem(reference[:, j], config.min_samples)
            if problem:
                log.warning("reference_column_unusable", feature=spec.name, problem=problem, test="window")
                self._tests.append(None)
            elif spec.kind is FeatureKind.NUMERIC:
                self._tests.append(KSDrift(finite.reshape(-1, 1), p_val=config.p_value))
            else:
                self._tests.append(
                    TabularDrift(
                        finite.reshape(-1, 1), p_val=config.p_value, categories_per_feature={0: None}
                    )
                )
        self._ring = _Ring(config.size, len(self._specs))
        self._since_eval = 0

    def update(self, rows: np.ndarray, times: np.ndarray) -> list[Verdict]:
        verdicts = []
        rows = np.asarray(rows, dtype=float)[:, self._columns]
        for i, (row, time) in enumerate(zip(rows, times, strict=True)):
            self._ring.append(row, time)
            self._since_eval += 1
            if self._ring.full and self._since_eval >= self._config.step:
                self._since_eval = 0
                verdicts.append(replace(self.evaluate(self._ring.rows, self._ring.times), row=i))
        return verdicts

    def reset(self) -> None:
        self._ring.clear()
        self._since_eval = 0

    def evaluate(self, window: np.ndarray, times: np.ndarray | None = None) -> Verdict:
        """Test any window (rows x windowed features) against the reference; tiny, NaN or
        constant columns are skipped."""
        window = np.asarray(window, dtype=float).reshape(len(window), len(self._specs))
        columns: list[tuple[int, np.ndarray] | FeatureStat] = []
        for j, spec in enumerate(self._specs):
            test_name = KS if spec.kind is FeatureKind.NUMERIC else CHI2
            if self._tests[j] is None:
                columns.append(FeatureStat(spec.name, test_name, note=REFERENCE_UNUSABLE))
                continue
            finite, problem = column_problem(window[:, j], self._config.min_samples)
            if problem:
                columns.append(FeatureStat(spec.name, test_name, note=problem))
            else:
                columns.append((j, finite))
        tested = sum(1 for c in columns if isinstance(c, tuple))
        threshold = self._config.p_value / tested if tested else math.nan
        stats: list[FeatureStat] = []
        for column in columns:
            if isinstance(column, FeatureStat):
                stats.append(column)
                continue
            j, finite = column
            spec = self._specs[j]
            test = self._tests[j]
            assert test is not None
            result = test.predict(finite.reshape(-1, 1), return_p_val=True, return_distance=True)["data"]
            p_value = float(np.asarray(result["p_val"]).ravel()[0])
            statistic = float(np.asarray(result["distance"]).ravel()[0])
            stats.append(
                FeatureStat(
                    spec.name,
                    KS if spec.kind is FeatureKind.NUMERIC else CHI2,
                    statistic=statistic,
                    p_value=p_value,
                    threshold=threshold,
                    drifted=bool(p_value < threshold),
                )
            )
        start, end = time_span(times) if times is not None else (math.nan, math.nan)
        return verdict_from_stats(stats, window_size=len(window), window_start=start, window_end=end)


class AlibiDetectorFactory:
    """Builds the window test and the online detectors of one stream with alibi-detect."""

    def build(
        self,
        stream: Stream,
        reference: np.ndarray,
        specs: Sequence[FeatureSpec],
        *,
        window: WindowConfig | None,
        online: OnlineConfig | None,
    ) -> list[Detector]:
        detectors: list[Detector] = []
        reference = np.asarray(reference, dtype=float)
        if window is not None and any(s.windowed for s in specs):
            detectors.append(WindowTestDetector(reference, specs, window))
        if online is not None:
            if any(s.kind is FeatureKind.NUMERIC for s in specs):
                detectors.append(CVMOnlineDetector(reference, specs, online))
            if any(s.kind is FeatureKind.BINARY for s in specs):
                detectors.append(FETOnlineDetector(reference, specs, online))
        log.info("detectors_built", stream=str(stream), detectors=[d.name for d in detectors])
        return detectors
