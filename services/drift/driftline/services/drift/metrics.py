"""Prometheus metrics of the drift service, and the small functions that update them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge

from driftline.services.drift.detectors import Status, Stream, Verdict
from driftline.services.drift.performance import Performance

DRIFT_STATE = Gauge(
    "driftline_drift_state",
    "Debounced detector state: 0 unknown, 1 no drift, 2 drift, 3 insufficient data.",
    ["stream", "detector"],
)
DRIFT_VERDICTS = Counter(
    "driftline_drift_verdicts_total", "Raw detector verdicts.", ["stream", "detector", "status"]
)
DRIFT_REPORTS = Counter(
    "driftline_drift_reports_total", "Drift reports published.", ["stream", "detector", "status"]
)
FEATURE_STATISTIC = Gauge(
    "driftline_drift_feature_statistic", "Last test statistic per feature.", ["stream", "detector", "feature"]
)
FEATURE_P_VALUE = Gauge(
    "driftline_drift_feature_p_value",
    "Last p-value per feature (windowed tests).",
    ["stream", "detector", "feature"],
)
EVENTS = Counter("driftline_drift_events_total", "Rows fed to the detectors.", ["stream"])
SKIPPED = Counter("driftline_drift_skipped_total", "Messages not used, by reason.", ["topic", "reason"])
REFERENCE_VERSION = Gauge(
    "driftline_drift_reference_version",
    "Model version whose reference the detectors use (0: none).",
    ["model"],
)
FEEDBACK = Counter("driftline_feedback_labels_total", "Feedback labels by join outcome.", ["outcome"])
FEEDBACK_PENDING = Gauge("driftline_feedback_pending_labels", "Labels waiting for their prediction.")
PREDICTIONS_HELD = Gauge("driftline_feedback_predictions_held", "Predictions kept for the join.")
MODEL_METRIC = Gauge(
    "driftline_model_live_metric",
    "Live metric over the last joined labels (accuracy, precision, recall, f1, auc).",
    ["model", "version", "role", "metric"],
)
LABEL_LAG = Gauge(
    "driftline_model_label_lag_seconds", "Mean label lag over the window.", ["model", "version", "role"]
)
LABELLED = Gauge("driftline_model_labelled", "Joined labels in the window.", ["model", "version", "role"])
DEGRADATIONS = Counter(
    "driftline_performance_degradations_total", "Performance degradations published.", ["model", "metric"]
)


def record_verdict(stream: Stream, detector: str, verdict: Verdict, state: Status) -> None:
    DRIFT_VERDICTS.labels(str(stream), detector, verdict.status.name).inc()
    DRIFT_STATE.labels(str(stream), detector).set(int(state))
    for stat in verdict.features:
        if stat.tested:
            FEATURE_STATISTIC.labels(str(stream), detector, stat.feature).set(stat.statistic)
            if not math.isnan(stat.p_value):
                FEATURE_P_VALUE.labels(str(stream), detector, stat.feature).set(stat.p_value)


def record_performance(performances: Iterable[Performance]) -> None:
    for p in performances:
        labels = (p.model_name, str(p.model_version), p.role or "champion")
        for name in ("accuracy", "precision", "recall", "f1", "auc"):
            MODEL_METRIC.labels(*labels, name).set(p.metric(name))
        LABEL_LAG.labels(*labels).set(p.label_lag_s)
        LABELLED.labels(*labels).set(p.labelled)


def record_join_counts(delta: Mapping[str, int]) -> None:
    for outcome, count in delta.items():
        if count:
            FEEDBACK.labels(outcome).inc(count)
