"""The drift monitor: one model version's reference, its detectors, and the reports they earn.

``DriftMonitor.load(reference)`` builds (and calibrates) the detectors of the two streams:

* **features**: every reference feature; the window test on all, the online CVM test on the
  numeric ones, the online FET test on the binary ones;
* **predictions**: the model's score (window KS test and online CVM) and its decision, the score
  at or above the decision threshold (online FET only). The decision is derived from the score on
  both sides, so the reference and the stream use the same threshold.

Rows go in with ``observe_features`` / ``observe_predictions``; every verdict goes through the
detector's :class:`Hysteresis`, and the reports due come back as :class:`DriftReportData`.
Calibrated detectors are cached per model version, so a replayed alias event or a rollback to a
recent version does not calibrate again.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import structlog

from driftline.featurestore.definitions import WindowType, declared_feature_set
from driftline.services.drift.detectors import (
    Detector,
    DetectorFactory,
    FeatureKind,
    FeatureSpec,
    FeatureStat,
    OnlineConfig,
    Status,
    Stream,
    Verdict,
    WindowConfig,
    infer_kinds,
)
from driftline.services.drift.errors import InvalidReference
from driftline.services.drift.hysteresis import Hysteresis, HysteresisPolicy

log = structlog.get_logger(__name__)

SCORE = "score"
DECISION = "predicted_label"


@dataclass(frozen=True)
class Reference:
    """A model version's reference sample, as the detectors need it."""

    model_name: str
    model_version: int
    feature_names: tuple[str, ...]
    #: rows x features, NaN for missing.
    values: np.ndarray
    #: The model's score on each row (may be empty: then the prediction stream is not watched).
    scores: np.ndarray
    decision_threshold: float = 0.5
    feature_set: str = ""
    feature_set_version: int = 0

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.feature_names):
            raise InvalidReference(
                f"reference values of shape {self.values.shape} do not match "
                f"{len(self.feature_names)} feature names"
            )
        if self.scores.size and self.scores.shape != (self.values.shape[0],):
            raise InvalidReference("reference scores must have one value per row")

    def without(self, names: frozenset[str]) -> Reference:
        """The same sample less the columns of ``names`` (itself when it has none of them)."""
        kept = [j for j, name in enumerate(self.feature_names) if name not in names]
        if len(kept) == len(self.feature_names):
            return self
        return replace(
            self,
            feature_names=tuple(self.feature_names[j] for j in kept),
            values=self.values[:, kept],
        )


def restarting_features(feature_set: str, version: int) -> frozenset[str]:
    """The features of a declared feature set computed over tumbling windows.

    Such a value restarts at every aligned window boundary, so its distribution depends on where
    in the window the event falls. A test window of a few seconds then differs from a reference
    spread over whole windows even on stationary traffic: in the demo, ``amount_sum_1m`` (the
    current aligned minute) rose from a median of ~35 to ~100 across each minute and failed about
    half the windowed tests before any drift. Unknown feature sets have none.
    """
    declared = declared_feature_set(feature_set, version)
    if declared is None:
        return frozenset()
    return frozenset(
        f.name for f in declared.features if f.window is not None and f.window.type is WindowType.TUMBLING
    )


@dataclass(frozen=True)
class MonitorConfig:
    window: WindowConfig = field(default_factory=WindowConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    window_policy: HysteresisPolicy = field(default_factory=HysteresisPolicy)
    online_policy: HysteresisPolicy = field(default_factory=HysteresisPolicy)
    categorical: frozenset[str] = frozenset()
    max_categories: int = 10
    watch_features: bool = True
    watch_predictions: bool = True
    online_features: bool = True
    #: Features no detector tests. None: those of the reference's feature set that are computed
    #: over tumbling windows (:func:`restarting_features`).
    unwatched: frozenset[str] | None = None
    #: Calibrated detector sets kept for versions other than the current one.
    cache_versions: int = 2


@dataclass(frozen=True)
class DriftReportData:
    """A report due, before it becomes a ``driftline.drift.v1.DriftReport``."""

    report_id: str
    model_name: str
    model_version: int
    detector: str
    stream: str
    status: Status
    window_size: int
    window_start: float
    window_end: float
    features: tuple[FeatureStat, ...]
    detected_at: float
    events_seen: int
    reason: str


@dataclass
class _Channel:
    stream: Stream
    detector: Detector
    hysteresis: Hysteresis
    last_verdict: Verdict | None = None


@dataclass
class _Built:
    specs: dict[Stream, list[FeatureSpec]]
    detectors: dict[Stream, list[Detector]]


class DriftMonitor:
    """Detectors of the currently watched model version, with hysteresis per detector."""

    def __init__(
        self,
        config: MonitorConfig,
        factory: DetectorFactory,
        *,
        clock: Callable[[], float] = time.time,
        on_verdict: Callable[[Stream, str, Verdict, Status], None] | None = None,
    ) -> None:
        self._config = config
        self._factory = factory
        self._clock = clock
        self._on_verdict = on_verdict
        self.reference: Reference | None = None
        self._channels: list[_Channel] = []
        self._hysteresis: dict[tuple[Stream, str], Hysteresis] = {}
        self._cache: OrderedDict[tuple[str, int], _Built] = OrderedDict()
        self._index: dict[str, int] = {}
        self.events_seen: dict[Stream, int] = {Stream.FEATURES: 0, Stream.PREDICTIONS: 0}

    # -- reference -------------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        return self.reference.model_version if self.reference is not None else None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.reference.feature_names if self.reference is not None else ()

    def load(self, reference: Reference) -> list[DriftReportData]:
        """Watch ``reference``'s model version from now on; reports for streams it cannot watch."""
        unwatched = self._config.unwatched
        if unwatched is None:
            unwatched = restarting_features(reference.feature_set, reference.feature_set_version)
        reference = reference.without(unwatched)
        key = (reference.model_name, reference.model_version)
        started = time.perf_counter()
        built = self._cache.pop(key, None)
        if built is None:
            built = self._build(reference)
        else:
            for detectors in built.detectors.values():
                for detector in detectors:
                    detector.reset()
        self._cache[key] = built
        while len(self._cache) > self._config.cache_versions + 1:
            self._cache.popitem(last=False)
        self.reference = reference
        self._index = {name: j for j, name in enumerate(reference.feature_names)}
        self.events_seen = {Stream.FEATURES: 0, Stream.PREDICTIONS: 0}
        self._channels = []
        for stream, detectors in built.detectors.items():
            for detector in detectors:
                policy = (
                    self._config.window_policy if detector.name == "window" else self._config.online_policy
                )
                hysteresis = self._hysteresis.setdefault((stream, detector.name), Hysteresis(policy))
                hysteresis.reset()
                self._channels.append(_Channel(stream, detector, hysteresis))
        log.info(
            "reference_loaded",
            model=reference.model_name,
            version=reference.model_version,
            rows=reference.values.shape[0],
            detectors=[f"{c.stream}/{c.detector.name}" for c in self._channels],
            ms=round((time.perf_counter() - started) * 1000),
        )
        reports = []
        for stream in (Stream.FEATURES, Stream.PREDICTIONS):
            if self._watched(stream) and not built.detectors.get(stream):
                reports.append(
                    self._unwatched_report(stream, "reference has nothing to compare for this stream")
                )
        return reports

    def unload(self, reason: str) -> list[DriftReportData]:
        """Stop watching (the alias was deleted); one INSUFFICIENT_DATA report per stream."""
        if self.reference is None:
            return []
        reports = [
            self._unwatched_report(s, reason)
            for s in (Stream.FEATURES, Stream.PREDICTIONS)
            if self._watched(s)
        ]
        self.reference = None
        self._channels = []
        return reports

    def _watched(self, stream: Stream) -> bool:
        return self._config.watch_features if stream is Stream.FEATURES else self._config.watch_predictions

    def _build(self, reference: Reference) -> _Built:
        specs: dict[Stream, list[FeatureSpec]] = {}
        detectors: dict[Stream, list[Detector]] = {}
        online = self._config.online
        if self._config.watch_features and reference.values.shape[0]:
            specs[Stream.FEATURES] = infer_kinds(
                reference.values,
                reference.feature_names,
                categorical=self._config.categorical,
                max_categories=self._config.max_categories,
            )
            detectors[Stream.FEATURES] = self._factory.build(
                Stream.FEATURES,
                reference.values,
                specs[Stream.FEATURES],
                window=self._config.window,
                online=online if self._config.online_features else None,
            )
        if self._config.watch_predictions and reference.scores.size:
            specs[Stream.PREDICTIONS] = [
                FeatureSpec(SCORE, FeatureKind.NUMERIC),
                # Decisions are bursty (fraud comes in bursts), which makes a chi-square test on a
                # window of them raise false alarms; the KS test on scores covers them there.
                FeatureSpec(DECISION, FeatureKind.BINARY, windowed=False),
            ]
            detectors[Stream.PREDICTIONS] = self._factory.build(
                Stream.PREDICTIONS,
                self._prediction_rows(reference.scores, reference.decision_threshold),
                specs[Stream.PREDICTIONS],
                window=self._config.window,
                online=online,
            )
        return _Built(specs, detectors)

    # -- rows ------------------------------------------------------------------------------
    def feature_row(self, values: Mapping[str, float]) -> np.ndarray:
        """A feature vector (by name) in reference column order; absent features are NaN."""
        row = np.full(len(self._index), np.nan)
        for name, value in values.items():
            j = self._index.get(name)
            if j is not None:
                row[j] = value
        return row

    @staticmethod
    def _prediction_rows(scores: np.ndarray, threshold: float) -> np.ndarray:
        scores = np.asarray(scores, dtype=float)
        decision = np.where(np.isfinite(scores), (scores >= threshold).astype(float), np.nan)
        return np.column_stack([scores, decision])

    def observe_features(self, rows: np.ndarray, times: np.ndarray) -> list[DriftReportData]:
        return self._observe(Stream.FEATURES, np.asarray(rows, dtype=float), np.asarray(times, dtype=float))

    def observe_predictions(self, scores: np.ndarray, times: np.ndarray) -> list[DriftReportData]:
        if self.reference is None:
            return []
        rows = self._prediction_rows(scores, self.reference.decision_threshold)
        return self._observe(Stream.PREDICTIONS, rows, np.asarray(times, dtype=float))

    def _observe(self, stream: Stream, rows: np.ndarray, times: np.ndarray) -> list[DriftReportData]:
        if self.reference is None or not len(rows):
            return []
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        reports = []
        channels = [c for c in self._channels if c.stream is stream]
        start = self.events_seen[stream]
        self.events_seen[stream] += len(rows)
        for channel in channels:
            for verdict in channel.detector.update(rows, times):
                channel.last_verdict = verdict
                now = self._clock()
                due = channel.hysteresis.observe(verdict.status, now)
                if self._on_verdict is not None:
                    self._on_verdict(stream, channel.detector.name, verdict, channel.hysteresis.state)
                if due is not None:
                    seen = start + (verdict.row + 1 if verdict.row >= 0 else len(rows))
                    reports.append(self._report(channel, verdict, due, now, seen))
        return reports

    # -- reports ---------------------------------------------------------------------------
    def _report(
        self, channel: _Channel, verdict: Verdict, status: Status, now: float, events_seen: int
    ) -> DriftReportData:
        assert self.reference is not None
        report = DriftReportData(
            report_id=str(uuid.uuid4()),
            model_name=self.reference.model_name,
            model_version=self.reference.model_version,
            detector=channel.detector.name,
            stream=str(channel.stream),
            status=status,
            window_size=verdict.window_size,
            window_start=verdict.window_start,
            window_end=verdict.window_end,
            features=verdict.features,
            detected_at=now,
            events_seen=events_seen,
            reason=verdict.reason or _status_reason(status),
        )
        log.info(
            "drift_report",
            stream=report.stream,
            detector=report.detector,
            status=status.name,
            version=report.model_version,
            events_seen=events_seen,
            reason=report.reason,
        )
        return report

    def _unwatched_report(self, stream: Stream, reason: str) -> DriftReportData:
        reference = self.reference
        return DriftReportData(
            report_id=str(uuid.uuid4()),
            model_name=reference.model_name if reference else "",
            model_version=reference.model_version if reference else 0,
            detector="monitor",
            stream=str(stream),
            status=Status.INSUFFICIENT_DATA,
            window_size=0,
            window_start=math.nan,
            window_end=math.nan,
            features=(),
            detected_at=self._clock(),
            events_seen=self.events_seen.get(stream, 0),
            reason=reason,
        )

    def states(self) -> dict[tuple[str, str], Status]:
        """Current debounced state per (stream, detector)."""
        return {(str(c.stream), c.detector.name): c.hysteresis.state for c in self._channels}

    def reset(self) -> None:
        """Forget the streams seen so far (detector windows and states); keep the calibration."""
        for channel in self._channels:
            channel.detector.reset()
            channel.hysteresis.reset()
        self.events_seen = {Stream.FEATURES: 0, Stream.PREDICTIONS: 0}


def _status_reason(status: Status) -> str:
    return {
        Status.NO_DRIFT: "no drift",
        Status.DRIFT: "drift",
        Status.INSUFFICIENT_DATA: "insufficient data",
    }.get(status, "")


def reference_from_arrays(
    model_name: str,
    model_version: int,
    feature_names: Sequence[str],
    values: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    decision_threshold: float = 0.5,
    feature_set: str = "",
    feature_set_version: int = 0,
) -> Reference:
    return Reference(
        model_name=model_name,
        model_version=model_version,
        feature_names=tuple(feature_names),
        values=np.asarray(values, dtype=float),
        scores=np.asarray(scores if scores is not None else [], dtype=float),
        decision_threshold=decision_threshold,
        feature_set=feature_set,
        feature_set_version=feature_set_version,
    )
