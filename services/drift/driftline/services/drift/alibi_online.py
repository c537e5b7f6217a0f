"""Online detectors with alibi-detect: ``CVMDriftOnline`` and ``FETDriftOnline``.

Thresholds are calibrated by simulation to an expected run time (ERT), then each row costs one
cheap update. Around alibi-detect 0.11.4 this module:

* trims the history its online detectors append on every row and never read again (memory, and
  an O(t) copy per row otherwise);
* breaks ties of discrete reference values (counts, rounded amounts) for the CVM test with a
  jitter below the smallest gap, applied alike to the stream: random tie-breaking keeps the rank
  statistic's null distribution;
* raises ``n_bootstraps`` to the minimum the ERT and feature count need (alibi-detect refuses
  fewer) with a warning instead of failing;
* reads Fisher p-values from a table (``TabulatedFETDriftOnline``) and fixes a calibration edge
  case of the FET detector;
* imputes missing values with random reference draws, and seeds NumPy's global generator around
  calibration (alibi-detect's simulations draw from it) so thresholds are reproducible.

A verdict covers ``eval_every`` rows; a feature drifted in it when the detector flagged it on at
least ``flag_share`` of them.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import structlog
from alibi_detect.cd import CVMDriftOnline, FETDriftOnline
from alibi_detect.utils.misc import quantile
from scipy.stats import hypergeom

from driftline.services.drift.detectors import (
    ALL_NAN,
    CONSTANT,
    REFERENCE_UNUSABLE,
    TINY,
    FeatureKind,
    FeatureSpec,
    FeatureStat,
    OnlineConfig,
    Verdict,
    column_problem,
    time_span,
    verdict_from_stats,
)

log = structlog.get_logger(__name__)

CVM_ONLINE = "cvm-online"
FET_ONLINE = "fet-online"


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator (alibi-detect's simulations use it), then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class _Block:
    """Per-column bookkeeping over the rows of one online verdict."""

    def __init__(self, width: int) -> None:
        self.rows = 0
        self.finite = np.zeros(width, dtype=int)
        self.low = np.full(width, np.inf)
        self.high = np.full(width, -np.inf)
        self.scored = np.zeros(width, dtype=int)
        self.flagged = np.zeros(width, dtype=int)
        #: Largest statistic/threshold ratio seen, with that statistic and threshold.
        self.ratio = np.full(width, -np.inf)
        self.statistic = np.full(width, np.nan)
        self.threshold = np.full(width, np.nan)
        self.times: list[float] = []

    def see(self, values: np.ndarray, time: float) -> np.ndarray:
        self.rows += 1
        self.times.append(time)
        finite = np.isfinite(values)
        self.finite += finite
        self.low = np.where(finite, np.minimum(self.low, values), self.low)
        self.high = np.where(finite, np.maximum(self.high, values), self.high)
        return finite

    def score(self, statistic: np.ndarray, threshold: np.ndarray, flagged: np.ndarray) -> None:
        known = np.isfinite(statistic) & np.isfinite(threshold)
        self.scored += known
        self.flagged += flagged & known
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(known, statistic / np.where(threshold == 0, np.inf, threshold), -np.inf)
        better = ratio > self.ratio
        self.ratio = np.where(better, ratio, self.ratio)
        self.statistic = np.where(better, statistic, self.statistic)
        self.threshold = np.where(better, threshold, self.threshold)


class _OnlineDetector:
    """Shared plumbing of the online detectors: column choice, imputation, blocks and verdicts."""

    name = ""
    test = ""

    def __init__(self, reference: np.ndarray, specs: Sequence[FeatureSpec], config: OnlineConfig) -> None:
        if config.eval_every < 1 or not config.window_sizes or min(config.window_sizes) < 1:
            raise ValueError("eval_every and window sizes must be positive")
        self._specs = list(specs)
        self._config = config
        self._rng = np.random.default_rng(config.seed)
        self._block = _Block(len(self._specs))
        self._max_window = max(config.window_sizes)
        self._recent_times: list[float] = []
        #: Indices (into specs) of the columns the detector tests.
        self.columns: list[int] = []
        self.unusable: set[int] = set()
        self._pools: list[np.ndarray] = []

    # -- helpers for subclasses -------------------------------------------------------------
    def _subsample(self, reference: np.ndarray) -> np.ndarray:
        n = len(reference)
        if n <= self._config.reference_size:
            return reference
        rows = self._rng.choice(n, self._config.reference_size, replace=False)
        return reference[np.sort(rows)]

    def _impute(self, values: np.ndarray, finite: np.ndarray) -> np.ndarray:
        """Missing values become random draws from the reference: the null stays the null."""
        if finite.all():
            return values
        out = values.copy()
        for k in np.flatnonzero(~finite):
            pool = self._pools[k]
            out[k] = pool[self._rng.integers(len(pool))]
        return out

    def _filled(self, column: np.ndarray) -> np.ndarray:
        """A reference column with its missing values drawn from its own finite values."""
        finite = np.isfinite(column)
        if finite.all():
            return column
        out = column.copy()
        out[~finite] = column[finite][self._rng.integers(int(finite.sum()), size=int((~finite).sum()))]
        return out

    def _detect(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(statistic, threshold, flagged) per tested column for one row."""
        raise NotImplementedError

    # -- Detector ----------------------------------------------------------------------------
    def update(self, rows: np.ndarray, times: np.ndarray) -> list[Verdict]:
        verdicts = []
        columns = np.asarray(self.columns, dtype=int)
        for i, (row, time) in enumerate(zip(rows, times, strict=True)):
            values = np.asarray(row, dtype=float)
            finite_all = self._block.see(values, time)
            self._recent_times.append(float(time))
            if len(self._recent_times) > self._max_window:
                del self._recent_times[0]
            if columns.size:
                tested = values[columns]
                finite = finite_all[columns]
                if finite.any():
                    statistic, threshold, flagged = self._detect(self._impute(tested, finite))
                    full_stat = np.full(len(self._specs), np.nan)
                    full_thr = np.full(len(self._specs), np.nan)
                    full_flag = np.zeros(len(self._specs), dtype=bool)
                    full_stat[columns] = statistic
                    full_thr[columns] = threshold
                    full_flag[columns] = flagged
                    self._block.score(full_stat, full_thr, full_flag)
            if self._block.rows >= self._config.eval_every:
                verdicts.append(replace(self._verdict(), row=i))
                self._block = _Block(len(self._specs))
        return verdicts

    def _verdict(self) -> Verdict:
        block = self._block
        share = self._config.flag_share
        stats = []
        for j, spec in enumerate(self._specs):
            if j not in self.columns:
                if j in self.unusable:
                    stats.append(FeatureStat(spec.name, self.test, note=REFERENCE_UNUSABLE))
                continue
            if block.finite[j] == 0:
                note = ALL_NAN
            elif block.finite[j] > 1 and block.low[j] == block.high[j]:
                note = CONSTANT
            elif block.scored[j] == 0:
                note = TINY
            else:
                note = ""
            stats.append(
                FeatureStat(
                    spec.name,
                    self.test,
                    statistic=float(block.statistic[j]) if not note else math.nan,
                    threshold=float(block.threshold[j]) if not note else math.nan,
                    drifted=not note and block.flagged[j] > 0 and block.flagged[j] >= share * block.scored[j],
                    note=note,
                )
            )
        start, end = time_span(np.asarray(self._recent_times))
        return verdict_from_stats(stats, window_size=self._max_window, window_start=start, window_end=end)

    def reset(self) -> None:
        self._block = _Block(len(self._specs))
        self._recent_times = []


def _min_bootstraps(ert: float, n_features: int) -> int:
    """Simulated streams needed to estimate the (1 - beta) quantile alibi-detect targets."""
    beta = 1 - (1 - 1 / ert) ** (1 / max(n_features, 1))
    return math.ceil(1.5 / beta)


def _bootstraps(config: OnlineConfig, ert: float, n_features: int, detector: str) -> int:
    needed = _min_bootstraps(ert, n_features)
    if config.n_bootstraps < needed:
        log.warning(
            "n_bootstraps_raised", detector=detector, configured=config.n_bootstraps, used=needed, ert=ert
        )
        return needed
    return config.n_bootstraps


def _trim(detector: CVMDriftOnline | FETDriftOnline, keep: int) -> None:
    """Drop the history alibi-detect appends on every row and never reads again."""
    if len(detector.xs) > keep:
        detector.xs = detector.xs[-keep:]
    if len(detector.test_stats) > 1:
        detector.test_stats = detector.test_stats[-1:]
        detector.drift_preds = detector.drift_preds[-1:]


class CVMOnlineDetector(_OnlineDetector):
    """Online Cramér-von Mises on the numeric features, calibrated to the ERT."""

    name = CVM_ONLINE
    test = CVM_ONLINE

    def __init__(self, reference: np.ndarray, specs: Sequence[FeatureSpec], config: OnlineConfig) -> None:
        super().__init__(reference, specs, config)
        reference = self._subsample(np.asarray(reference, dtype=float))
        min_rows = max(2 * max(config.window_sizes), 10)
        columns, pools, jitter = [], [], []
        for j, spec in enumerate(self._specs):
            if spec.kind is not FeatureKind.NUMERIC:
                continue
            finite, problem = column_problem(reference[:, j], min_rows)
            if problem:
                log.warning("reference_column_unusable", feature=spec.name, problem=problem, test=self.test)
                self.unusable.add(j)
                continue
            columns.append(j)
            pools.append(finite)
            distinct = np.unique(finite)
            # Ties break at random below the smallest gap between distinct values.
            jitter.append(float(np.diff(distinct).min()) * 1e-3 if distinct.size < finite.size else 0.0)
        self.columns = columns
        self._pools = pools
        self._jitter = np.asarray(jitter)
        self._detector: CVMDriftOnline | None = None
        if columns:
            x_ref = self._jittered(np.column_stack([self._filled(reference[:, j]) for j in columns]))
            n_bootstraps = _bootstraps(config, config.ert, len(columns), self.name)
            with _seeded(config.seed):
                self._detector = CVMDriftOnline(
                    x_ref,
                    ert=config.ert,
                    window_sizes=list(config.window_sizes),
                    n_bootstraps=n_bootstraps,
                    batch_size=64,
                    verbose=False,
                )

    def _jittered(self, values: np.ndarray) -> np.ndarray:
        if not self._jitter.any():
            return values
        return values + self._rng.uniform(-1.0, 1.0, size=values.shape) * self._jitter

    def _detect(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._detector is not None
        result = self._detector.predict(self._jittered(values), return_test_stat=True)["data"]
        statistic = np.fmax.reduce(np.asarray(result["test_stat"], dtype=float), axis=0)
        threshold = np.broadcast_to(np.asarray(result["threshold"], dtype=float).ravel(), statistic.shape)
        flagged = np.nan_to_num(statistic, nan=-np.inf) > threshold
        _trim(self._detector, self._max_window)
        return statistic, np.array(threshold), flagged

    def reset(self) -> None:
        super().reset()
        if self._detector is not None:
            self._detector.reset_state()


class TabulatedFETDriftOnline(FETDriftOnline):
    """``FETDriftOnline`` with its Fisher p-values read from a table instead of recomputed.

    For a window of ``ws`` rows the p-value depends only on how many ones the window holds
    (0..ws), so ``hypergeom.cdf`` is evaluated once per possible count, with the very arguments
    alibi-detect passes, and looked up afterwards: the thresholds and statistics are the same
    numbers, at a fraction of the cost (scipy's per-call overhead dominated both calibration and
    every row).

    Calibration is alibi-detect's algorithm with one fix: the probability of keeping a simulated
    stream whose statistic equals the threshold is clipped to [0, 1]. With very discrete
    statistics (short windows, rare flags) alibi-detect 0.11.4 computes values above 1 there
    and ``np.random.binomial`` raises.
    """

    def _configure_thresholds(self) -> None:
        beta = 1 - (1 - self.fpr) ** (1 / self.n_features)
        self.permit_probs = np.full((self.t_max, self.n_features), np.nan)
        thresholds = np.full((self.t_max, self.n_features), np.nan, dtype=np.float32)
        for f in range(self.n_features):
            stats = self._simulate_streams(self.x_ref[:, f], None)
            max_stats = np.fmax.reduce(stats, axis=-1)
            for t in range(np.min(self.window_sizes) - 1, self.t_max):
                threshold = np.float32(quantile(max_stats[:, t], 1 - beta, interpolate=False, type=6))
                below = max_stats[:, t] < threshold
                prob_of_equal = (max_stats[:, t] <= threshold).mean() - below.mean()
                if prob_of_equal == 0.0:
                    permit_prob = np.inf
                    max_stats = max_stats[below]
                else:
                    undershoot = 1 - beta - below.mean()
                    permit_prob = float(np.clip(undershoot / prob_of_equal, 0.0, 1.0))
                    stats_equal = max_stats[max_stats[:, t] == threshold]
                    n_keep_equal = np.random.binomial(len(stats_equal), permit_prob)
                    max_stats = np.concatenate([max_stats[below], stats_equal[:n_keep_equal]])
                thresholds[t, f] = threshold
                self.permit_probs[t, f] = permit_prob
        self.thresholds = thresholds

    def _table(self, sum_ref: np.ndarray, ws: int) -> np.ndarray:
        """1 - p-value for each count of ones in the window (rows) and feature (columns)."""
        counts = np.arange(ws + 1).reshape(-1, 1)
        sum_ref = np.asarray(sum_ref).reshape(1, -1)
        if self.alternative == "greater":
            p_val = hypergeom.cdf(sum_ref, self.n + ws, sum_ref + counts, self.n)
        else:
            p_val = hypergeom.cdf(counts, self.n + ws, sum_ref + counts, ws)
        return np.asarray(1 - p_val)

    def _simulate_streams(self, x_ref: np.ndarray, pbar: Any) -> np.ndarray:
        n_windows = len(self.window_sizes)
        stats = np.full((self.n_bootstraps, self.t_max, n_windows), np.nan, dtype=np.float32)
        p = np.mean(x_ref)
        sum_ref = np.sum(x_ref)
        x_stream = np.random.choice([False, True], (self.n_bootstraps, self.t_max), p=[1 - p, p])
        cumsums_stream = np.cumsum(x_stream, axis=-1)
        cumsums_stream = np.concatenate([np.zeros_like(cumsums_stream[..., 0:1]), cumsums_stream], axis=-1)
        for k in range(n_windows):
            if pbar is not None:
                pbar.update(1)
            ws = self.window_sizes[k]
            cumsums_last_ws = cumsums_stream[:, ws:] - cumsums_stream[:, :-ws]
            one_minus_p = self._table(np.array([sum_ref]), ws)[:, 0][cumsums_last_ws]
            stats[:, (ws - 1) :, k] = self._exp_moving_avg(one_minus_p, self.lam)
        return stats

    def score(self, x_t: np.ndarray) -> np.ndarray:
        values = set(np.unique(x_t))
        if not values <= {0, 1}:
            raise ValueError("FETDriftOnline data must consist of 0/1 or False/True only")
        x_t = super()._preprocess_xt(x_t)
        self._update_state(x_t)
        tables = self.__dict__.setdefault("_tables", {})
        features = np.arange(self.n_features)
        stats = np.zeros((len(self.window_sizes), self.n_features), dtype=np.float32)
        for k, ws in enumerate(self.window_sizes):
            if self.t < ws:
                stats[k, :] = np.nan
                continue
            if ws not in tables:
                tables[ws] = self._table(self.sum_ref, ws)
            sum_last_ws = np.sum(self.xs[-ws:, :], axis=0).astype(int)
            stats_k = tables[ws][sum_last_ws, features].astype(float)
            if len(self.test_stats) != 0:
                previous = self.test_stats[-1, k, :]
                known = ~np.isnan(previous)
                stats_k[known] = (1 - self.lam) * previous[known] + self.lam * stats_k[known]
            stats[k, :] = stats_k
        return stats


class FETOnlineDetector(_OnlineDetector):
    """Online Fisher exact test on the binary features, calibrated to the ERT.

    FET is one-sided; with ``fet_alternative="both"`` two detectors watch the two directions,
    each calibrated to twice the ERT so that together they keep the configured one.
    """

    name = FET_ONLINE
    test = FET_ONLINE

    def __init__(self, reference: np.ndarray, specs: Sequence[FeatureSpec], config: OnlineConfig) -> None:
        super().__init__(reference, specs, config)
        reference = self._subsample(np.asarray(reference, dtype=float))
        alternatives = ["greater", "less"] if config.fet_alternative == "both" else [config.fet_alternative]
        if not set(alternatives) <= {"greater", "less"}:
            raise ValueError(f"fet_alternative must be greater, less or both, not {config.fet_alternative!r}")
        min_rows = max(2 * max(config.window_sizes), 10)
        columns, pools = [], []
        for j, spec in enumerate(self._specs):
            if spec.kind is not FeatureKind.BINARY:
                continue
            finite, problem = column_problem(reference[:, j], min_rows)
            if not problem and not set(np.unique(finite).tolist()) <= {0.0, 1.0}:
                problem = "not_binary"
            if problem:
                log.warning("reference_column_unusable", feature=spec.name, problem=problem, test=self.test)
                self.unusable.add(j)
                continue
            columns.append(j)
            pools.append(finite)
        self.columns = columns
        self._pools = pools
        self._detectors: list[TabulatedFETDriftOnline] = []
        if columns:
            x_ref = np.column_stack([self._filled(reference[:, j]) for j in columns]).astype(int)
            ert = config.ert * len(alternatives)
            n_bootstraps = _bootstraps(config, ert, len(columns), self.name)
            for k, alternative in enumerate(alternatives):
                with _seeded(config.seed + k), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    self._detectors.append(
                        TabulatedFETDriftOnline(
                            x_ref,
                            ert=ert,
                            window_sizes=list(config.window_sizes),
                            n_bootstraps=n_bootstraps,
                            alternative=alternative,
                            verbose=False,
                        )
                    )

    def _detect(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Anything but 0/1 (a probability, a bad value) is treated as missing.
        binary = np.isin(values, (0.0, 1.0))
        x = self._impute(values, binary).astype(int)
        best_stat = np.full(len(values), np.nan)
        best_thr = np.full(len(values), np.nan)
        flagged = np.zeros(len(values), dtype=bool)
        best_ratio = np.full(len(values), -np.inf)
        for detector in self._detectors:
            result = detector.predict(x, return_test_stat=True)["data"]
            statistic = np.fmax.reduce(np.asarray(result["test_stat"], dtype=float), axis=0)
            threshold = np.asarray(result["threshold"], dtype=float).ravel()
            known = np.isfinite(statistic) & np.isfinite(threshold)
            over = known & (statistic > threshold)
            if result["is_drift"] and not over.any():
                # alibi-detect flags some rows whose statistic equals the threshold, at random.
                over = known & (statistic >= threshold)
            flagged |= over
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(known & (threshold > 0), statistic / threshold, -np.inf)
            better = ratio > best_ratio
            best_ratio = np.where(better, ratio, best_ratio)
            best_stat = np.where(better, statistic, best_stat)
            best_thr = np.where(better, threshold, best_thr)
            _trim(detector, self._max_window)
        return best_stat, best_thr, flagged

    def reset(self) -> None:
        super().reset()
        for detector in self._detectors:
            detector.reset_state()
