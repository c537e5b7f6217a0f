"""Detection delay and false alarms, measured offline: the drift part of ``bench/loop.py``.

Two levels:

* :func:`measure_detection_delay` times one online detector the way alibi-detect's own
  examples do (``doc/source/examples/cd_online_wine.ipynb``: reset the detector, feed it
  instances of one distribution in random order, count the instances before the first
  detection). On drifted data that count is the detection delay; on reference-distribution data
  it is the run length, whose mean should be near the ERT;
* :func:`measure_monitor_delay` runs the whole :class:`DriftMonitor` (window test and online
  detectors with hysteresis) over a stream with a known change point, and reports, per detector,
  the events from the change point to the first DRIFT report and the DRIFT reports before it
  (false alarms): the delay a retrain trigger actually sees.

Both count events (rows); seconds follow from the event rate of the stream they run on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from driftline.services.drift.alibi_online import CVM_ONLINE, FET_ONLINE, CVMOnlineDetector, FETOnlineDetector
from driftline.services.drift.detectors import DetectorFactory, OnlineConfig, Status, infer_kinds
from driftline.services.drift.monitor import DriftMonitor, MonitorConfig, reference_from_arrays


@dataclass(frozen=True)
class DelayStats:
    """Events before the first detection, over ``runs`` runs (undetected runs are left out)."""

    runs: int
    detected: int
    mean: float
    median: float
    p90: float
    maximum: float
    ert: float
    window_sizes: tuple[int, ...]

    @property
    def missed(self) -> int:
        return self.runs - self.detected


def _stats(delays: Sequence[int], runs: int, ert: float, window_sizes: tuple[int, ...]) -> DelayStats:
    arr = np.asarray(delays, dtype=float)
    if not arr.size:
        return DelayStats(runs, 0, math.nan, math.nan, math.nan, math.nan, ert, window_sizes)
    return DelayStats(
        runs=runs,
        detected=int(arr.size),
        mean=float(arr.mean()),
        median=float(np.median(arr)),
        p90=float(np.percentile(arr, 90)),
        maximum=float(arr.max()),
        ert=ert,
        window_sizes=window_sizes,
    )


def measure_detection_delay(
    reference: np.ndarray,
    stream: np.ndarray,
    *,
    detector: str = CVM_ONLINE,
    feature_names: Sequence[str] | None = None,
    ert: float = 50.0,
    window_sizes: Sequence[int] = (10,),
    n_bootstraps: int = 2500,
    reference_size: int = 500,
    runs: int = 100,
    max_events: int = 10_000,
    before: np.ndarray | None = None,
    seed: int = 0,
) -> DelayStats:
    """Events of ``stream`` fed before one online detector first flags drift, over ``runs`` runs.

    ``reference``/``stream``: rows x features (numeric ones for ``cvm-online``, 0/1 ones for
    ``fet-online``). Each run resets the detector, optionally feeds ``2 * max(window_sizes)``
    random rows of ``before`` (the pre-change distribution, so the test windows are full of
    it), then feeds random rows of ``stream`` one at a time; the delay is the number of
    ``stream`` rows fed before the one that raised the detection (alibi-detect's ``time_run``
    convention). Runs with no detection within ``max_events`` count as missed.
    """
    reference = np.asarray(reference, dtype=float)
    stream = np.asarray(stream, dtype=float)
    names = list(feature_names) if feature_names else [f"x{j}" for j in range(reference.shape[1])]
    kind = "numeric" if detector == CVM_ONLINE else "binary"
    specs = infer_kinds(reference, names)
    if any(s.kind != kind for s in specs):
        raise ValueError(f"{detector} needs {kind} columns only, got {[s.kind for s in specs]}")
    config = OnlineConfig(
        ert=ert,
        window_sizes=tuple(window_sizes),
        n_bootstraps=n_bootstraps,
        reference_size=reference_size,
        eval_every=1,
        seed=seed,
    )
    if detector == CVM_ONLINE:
        online: CVMOnlineDetector | FETOnlineDetector = CVMOnlineDetector(reference, specs, config)
    elif detector == FET_ONLINE:
        online = FETOnlineDetector(reference, specs, config)
    else:
        raise ValueError(f"unknown online detector {detector!r}")
    rng = np.random.default_rng(seed)
    warmup = 2 * max(window_sizes)
    delays = []
    for _ in range(runs):
        online.reset()
        if before is not None:
            rows = before[rng.integers(len(before), size=warmup)]
            online.update(rows, np.zeros(len(rows)))
        order = rng.permutation(len(stream))
        for t in range(max_events):
            row = stream[order[t % len(order)]].reshape(1, -1)
            if online.update(row, np.zeros(1))[0].status is Status.DRIFT:
                delays.append(t)
                break
    return _stats(delays, runs, ert, tuple(window_sizes))


@dataclass(frozen=True)
class MonitorDelay:
    """What one detector of the monitor did on a stream with a change point."""

    stream: str
    detector: str
    #: Events from the change point to the first DRIFT report after it (None: never reported).
    delay_events: int | None
    #: DRIFT reports before the change point.
    false_alarms: int


@dataclass(frozen=True)
class MonitorRun:
    change_point: int
    events: int
    delays: list[MonitorDelay] = field(default_factory=list)

    def first_delay(self, stream: str = "features") -> int | None:
        """The earliest detection over the detectors of ``stream``."""
        found = [d.delay_events for d in self.delays if d.stream == stream and d.delay_events is not None]
        return min(found) if found else None

    @property
    def false_alarms(self) -> int:
        return sum(d.false_alarms for d in self.delays)


def measure_monitor_delay(
    reference: np.ndarray,
    feature_names: Sequence[str],
    stream: np.ndarray,
    change_point: int,
    config: MonitorConfig,
    *,
    reference_scores: np.ndarray | None = None,
    stream_scores: np.ndarray | None = None,
    decision_threshold: float = 0.5,
    monitor: DriftMonitor | None = None,
    factory: DetectorFactory | None = None,
    batch: int = 50,
) -> MonitorRun:
    """Feed ``stream`` (rows; drift from row ``change_point``) to a monitor; delays per detector.

    Pass a ``monitor`` already loaded with the reference to reuse its calibration across runs
    (it is reset first); otherwise one is built with ``factory`` (alibi-detect by default).
    Cooldown is disabled: every DRIFT report counts.
    """
    if monitor is None:
        from driftline.services.drift.alibi_backend import AlibiDetectorFactory

        policy_w = replace(config.window_policy, cooldown_s=0.0)
        policy_o = replace(config.online_policy, cooldown_s=0.0)
        monitor = DriftMonitor(
            replace(config, window_policy=policy_w, online_policy=policy_o),
            factory or AlibiDetectorFactory(),
            clock=lambda: 0.0,
        )
        monitor.load(
            reference_from_arrays(
                "bench",
                1,
                feature_names,
                reference,
                reference_scores,
                decision_threshold=decision_threshold,
            )
        )
    else:
        monitor.reset()
    first: dict[tuple[str, str], int] = {}
    false_alarms: dict[tuple[str, str], int] = {}
    for key in monitor.states():
        false_alarms[key] = 0
    times = np.arange(len(stream), dtype=float)
    for start in range(0, len(stream), batch):
        stop = min(start + batch, len(stream))
        reports = monitor.observe_features(stream[start:stop], times[start:stop])
        if stream_scores is not None:
            reports += monitor.observe_predictions(stream_scores[start:stop], times[start:stop])
        for report in reports:
            if report.status is not Status.DRIFT:
                continue
            key = (report.stream, report.detector)
            at = report.events_seen
            if at <= change_point:
                false_alarms[key] = false_alarms.get(key, 0) + 1
            elif key not in first:
                first[key] = at - change_point
    delays = [
        MonitorDelay(
            stream=s, detector=d, delay_events=first.get((s, d)), false_alarms=false_alarms.get((s, d), 0)
        )
        for (s, d) in sorted(false_alarms)
    ]
    return MonitorRun(change_point=change_point, events=len(stream), delays=delays)


__all__ = [
    "DelayStats",
    "MonitorDelay",
    "MonitorRun",
    "measure_detection_delay",
    "measure_monitor_delay",
]
