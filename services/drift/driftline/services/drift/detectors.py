"""The detector interface the drift monitor codes against, and the domain types it speaks.

A :class:`Detector` consumes rows of one stream (feature vectors, or model scores) one batch at
a time and returns a :class:`Verdict` each time it has evaluated something: a windowed detector
after every ``step`` rows, an online detector after every ``eval_every`` rows. Verdicts are raw:
hysteresis and cooldown are the monitor's business, so a backend only has to say "drifted or not,
and why". ``alibi_backend`` implements the interface with alibi-detect; another backend only has
to provide a :class:`DetectorFactory`.

Data quality is decided here, the same way for every backend: a feature whose window is tiny,
all NaN or constant is *insufficient* and is left out of the test (never a crash); a verdict
whose every feature is insufficient has status ``INSUFFICIENT_DATA``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Status(enum.IntEnum):
    """A detector's state; values equal ``driftline.drift.v1.DriftStatus``."""

    UNSPECIFIED = 0
    NO_DRIFT = 1
    DRIFT = 2
    INSUFFICIENT_DATA = 3


class FeatureKind(enum.StrEnum):
    NUMERIC = "numeric"
    #: A few integer codes (chi-square on counts).
    CATEGORICAL = "categorical"
    #: Only 0 and 1: categorical, and eligible for the online Fisher exact test.
    BINARY = "binary"


class Stream(enum.StrEnum):
    FEATURES = "features"
    PREDICTIONS = "predictions"


#: Why a feature was left out of a test (``FeatureStat.note``).
TINY = "tiny"
ALL_NAN = "all_nan"
CONSTANT = "constant"
REFERENCE_UNUSABLE = "reference_unusable"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: FeatureKind
    #: Tested by the windowed test too (online detectors test every feature of their kind).
    windowed: bool = True


@dataclass(frozen=True)
class FeatureStat:
    """One feature's test in one verdict. Online tests have a threshold and no p-value (NaN)."""

    feature: str
    test: str
    statistic: float = math.nan
    p_value: float = math.nan
    threshold: float = math.nan
    drifted: bool = False
    #: Empty when tested; otherwise why the feature was left out (TINY, ALL_NAN, CONSTANT...).
    note: str = ""

    @property
    def tested(self) -> bool:
        return not self.note


@dataclass(frozen=True)
class Verdict:
    """A detector's raw verdict on one evaluation."""

    status: Status
    features: tuple[FeatureStat, ...]
    #: Rows the test looked at (the window, or the online test window).
    window_size: int
    #: Event times (epoch seconds) of the first and last row of the evaluated window.
    window_start: float = math.nan
    window_end: float = math.nan
    reason: str = ""
    #: Index, in the batch passed to ``Detector.update``, of the row that completed the evaluation.
    row: int = -1

    @property
    def drifted_features(self) -> list[str]:
        return [s.feature for s in self.features if s.drifted]


def verdict_from_stats(
    stats: Sequence[FeatureStat],
    *,
    window_size: int,
    window_start: float = math.nan,
    window_end: float = math.nan,
) -> Verdict:
    """DRIFT if a tested feature drifted, INSUFFICIENT_DATA if none could be tested."""
    tested = [s for s in stats if s.tested]
    if not tested:
        notes = sorted({f"{s.feature}:{s.note}" for s in stats})
        return Verdict(
            Status.INSUFFICIENT_DATA,
            tuple(stats),
            window_size,
            window_start,
            window_end,
            reason="no feature could be tested: " + ", ".join(notes) if notes else "no features",
        )
    drifted = [s.feature for s in tested if s.drifted]
    status = Status.DRIFT if drifted else Status.NO_DRIFT
    reason = "drifted: " + ", ".join(drifted) if drifted else ""
    return Verdict(status, tuple(stats), window_size, window_start, window_end, reason=reason)


def time_span(times: np.ndarray) -> tuple[float, float]:
    """First and last finite event time (epoch seconds), NaN when none."""
    finite = times[np.isfinite(times)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.min()), float(finite.max())


def column_problem(values: np.ndarray, min_samples: int) -> tuple[np.ndarray, str]:
    """The finite values of one column and, when it cannot be tested, why (else "")."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return finite, ALL_NAN if values.size else TINY
    if finite.size < min_samples:
        return finite, TINY
    if float(np.ptp(finite)) == 0.0:
        return finite, CONSTANT
    return finite, ""


def infer_kinds(
    reference: np.ndarray,
    names: Sequence[str],
    *,
    categorical: frozenset[str] = frozenset(),
    max_categories: int = 10,
) -> list[FeatureSpec]:
    """Numeric, categorical or binary for each reference column.

    A column named in ``categorical`` is categorical; so is one whose finite values are integers
    with at most ``max_categories`` distinct values (counts, flags). Categorical columns with
    only 0 and 1 are binary.
    """
    specs = []
    for j, name in enumerate(names):
        column = reference[:, j]
        finite = column[np.isfinite(column)]
        distinct = np.unique(finite)
        integral = bool(finite.size) and bool(np.all(distinct == np.round(distinct)))
        if name in categorical or (integral and distinct.size <= max_categories):
            binary = bool(finite.size) and set(distinct.tolist()) <= {0.0, 1.0}
            specs.append(FeatureSpec(name, FeatureKind.BINARY if binary else FeatureKind.CATEGORICAL))
        else:
            specs.append(FeatureSpec(name, FeatureKind.NUMERIC))
    return specs


class Detector(Protocol):
    """One drift test over one stream. Implementations keep their own windows and state."""

    #: Stable name reported in ``DriftReport.detector`` ("window", "cvm-online", "fet-online").
    name: str

    def update(self, rows: np.ndarray, times: np.ndarray) -> list[Verdict]:
        """Feed ``rows`` (n x d, NaN for missing) with their event times; verdicts evaluated meanwhile."""
        ...

    def reset(self) -> None:
        """Forget the stream seen so far; keep the reference and any calibration."""
        ...


@dataclass(frozen=True)
class WindowConfig:
    """Per-feature two-sample tests (KS, chi-square) on a sliding window."""

    size: int = 500
    step: int = 250
    #: Family-wise significance over the tested features (Bonferroni).
    p_value: float = 0.01
    min_samples: int = 30


@dataclass(frozen=True)
class OnlineConfig:
    """Online detectors whose thresholds are calibrated to an expected run time."""

    #: Expected number of rows between two raw alarms of one detector on a stationary stream.
    ert: float = 500.0
    window_sizes: tuple[int, ...] = (10, 30)
    #: Raised to the minimum the ERT and feature count need (alibi-detect refuses fewer).
    n_bootstraps: int = 2500
    #: Reference rows used (a random subsample): per-row cost and calibration grow with it.
    reference_size: int = 250
    #: Rows per verdict.
    eval_every: int = 50
    #: A feature drifted in a verdict when the detector flagged it on at least this share of the
    #: verdict's rows (0: on any row). Raw alarms on a stationary stream last a few rows; drift
    #: keeps the statistic above its threshold, so this filters false alarms at little delay.
    flag_share: float = 0.5
    #: "greater", "less" or "both" (two detectors, each at twice the ERT).
    fet_alternative: str = "both"
    seed: int = 0


class DetectorFactory(Protocol):
    """Builds the detectors of one stream from a reference sample (calibrating them)."""

    def build(
        self,
        stream: Stream,
        reference: np.ndarray,
        specs: Sequence[FeatureSpec],
        *,
        window: WindowConfig | None,
        online: OnlineConfig | None,
    ) -> list[Detector]: ...
