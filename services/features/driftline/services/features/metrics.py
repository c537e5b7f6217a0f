"""Prometheus metrics of the features service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "driftline_features_events_total",
    "Clean events seen, by outcome: added, late (within the allowed lateness, counted in), "
    "duplicate (a replay, not counted twice), too_late (dropped).",
    ["feature_set", "outcome"],
)
LATE_EVENTS = Counter(
    "driftline_features_late_events_total",
    "Events older than their entity's newest one, by disposition (accepted, dropped).",
    ["feature_set", "disposition"],
)
FRESHNESS = Histogram(
    "driftline_features_freshness_seconds",
    "Time from an event's event time to its features being visible in Redis.",
    ["feature_set"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BATCH_SECONDS = Histogram(
    "driftline_features_batch_seconds",
    "Time to process one batch: state round trips, computation, publication.",
    ["feature_set"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "driftline_features_batch_events",
    "Events per processed batch.",
    ["feature_set"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
DEAD_LETTERED = Counter(
    "driftline_features_dead_lettered_total",
    "Events sent to the clean transactions' dead-letter topic, by reason.",
    ["reason"],
)
RETRIES = Counter("driftline_features_batch_retries_total", "Batches retried after a transient error.")
VECTORS = Counter(
    "driftline_features_vectors_published_total",
    "Feature vectors acknowledged by the broker.",
    ["feature_set"],
)
OFFLINE_ROWS = Counter(
    "driftline_features_offline_rows_total", "Rows appended to the offline store.", ["feature_set"]
)
OFFLINE_FAILURES = Counter(
    "driftline_features_offline_flush_failures_total",
    "Offline-store writes that failed (rows kept for retry).",
)
OFFLINE_DROPPED = Counter(
    "driftline_features_offline_rows_dropped_total",
    "Rows dropped because too many were pending after failures.",
)
OFFLINE_MALFORMED = Counter(
    "driftline_features_offline_vectors_malformed_total",
    "Feature vectors the offline sink could not decode into rows (acked, not written).",
)
OFFLINE_PENDING = Gauge(
    "driftline_features_offline_pending_rows", "Rows waiting for a successful offline write."
)
