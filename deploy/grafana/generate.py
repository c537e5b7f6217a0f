"""Writes the Grafana dashboards of deploy/grafana/dashboards/ from the panel lists below.

    .venv/bin/python deploy/grafana/generate.py          # rewrite the JSON files
    .venv/bin/python deploy/grafana/generate.py --check  # exit 1 if a file is out of date

The JSON files are committed (Grafana provisions them as they are); this script is their source,
so ids, grid positions and the datasource reference stay consistent. tests/contract/
test_dashboards.py fails when the two disagree, when a query names a metric that no code
defines, or when a query does not parse.

Conventions: every query selects Driftline metrics by name (never `or vector(0)`, so an empty
panel means missing data, which the end-to-end test reports); counters are shown as rates over
$__rate_interval; latency histograms as p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "driftline-prometheus"}
SCHEMA_VERSION = 39
GRID_WIDTH = 24

DRIFT_STATE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "unknown", "color": "text", "index": 0},
            "1": {"text": "no drift", "color": "green", "index": 1},
            "2": {"text": "DRIFT", "color": "red", "index": 2},
            "3": {"text": "insufficient data", "color": "yellow", "index": 3},
        },
    }
]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    #: "table" with instant=True shows labels (e.g. a model version) rather than a value.
    table: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"
    unit: str = "short"
    width: int = 12
    height: int = 8
    decimals: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: Threshold steps above the base colour: (value, colour).
    thresholds: tuple[tuple[float, str], ...] = ()
    mappings: list[dict[str, Any]] = field(default_factory=list)
    #: For stat panels showing a label: the field whose value is shown (regex).
    stat_field: str = ""
    stack: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    filename: str


def rate(metric: str, by: str = "", selector: str = "") -> str:
    grouping = f"sum by ({by}) " if by else "sum"
    return f"{grouping}(rate({metric}{selector}[$__rate_interval]))"


def quantile(q: float, histogram: str, by: str = "", selector: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{selector}[$__rate_interval])))"
    )


def mean(histogram: str, by: str = "") -> str:
    """Mean observation over the rate window: rate of the sum over rate of the count."""
    grouping = f"sum by ({by}) " if by else "sum"
    return (
        f"{grouping}(rate({histogram}_sum[$__rate_interval]))"
        f" / {grouping}(rate({histogram}_count[$__rate_interval]))"
    )


def share(counter: str, by: str, part: str) -> str:
    """Each ``part`` value's share of the counter's rate within its ``by`` group."""
    return f"{rate(counter, f'{by}, {part}')} / ignoring ({part}) group_left {rate(counter, by)}"


def latency(histogram: str, by: str = "", selector: str = "", legend: str = "") -> tuple[Query, ...]:
    prefix = f"{legend} " if legend else ""
    return (
        Query(quantile(0.5, histogram, by, selector), f"{prefix}p50"),
        Query(quantile(0.99, histogram, by, selector), f"{prefix}p99"),
    )


# --- Panels shared by several dashboards ---------------------------------------------------------

TARGETS_UP = Panel(
    "Services up",
    "1 when Prometheus can scrape the service's /metrics endpoint (alert: DriftlineTargetDown).",
    (Query('up{job!="prometheus"}', "{{job}}"),),
    kind="stat",
    width=24,
    height=4,
    thresholds=((1, "green"),),
    mappings=[
        {
            "type": "value",
            "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}},
        }
    ],
)
CONSUMER_LAG = Panel(
    "Consumer lag by group and topic",
    "Messages between each consumer group's committed offset and the end of the topic, summed over "
    "partitions (alert: DriftlineConsumerLagHigh at 10k for 2m).",
    (Query("group_topic:driftline_kafka_consumer_lag:sum", "{{group}} · {{topic}}"),),
    thresholds=((10000, "red"),),
)
DEAD_LETTERS = Panel(
    "Dead-lettered messages/s by topic and reason",
    "Messages routed to a dead-letter topic by the kit consumer loop and by the features service, "
    "with their reason code (alert: DriftlineDeadLetterRateHigh).",
    (
        Query(rate("driftline_kafka_dead_lettered_total", "topic, reason"), "{{topic}} · {{reason}}"),
        Query(rate("driftline_features_dead_lettered_total", "reason"), "features · {{reason}}"),
    ),
    unit="ops",
)
PREDICTION_LATENCY = Panel(
    "Prediction latency (whole call)",
    "p50 and p99 of the whole Predict call; the SLO is p99 under 50 ms "
    "(alert: DriftlinePredictionLatencyP99High).",
    latency("driftline_inference_stage_seconds", selector='{stage="total"}'),
    unit="s",
    thresholds=((0.05, "red"),),
)
CHAMPION = Panel(
    "Champion version",
    "The model version the inference service serves as champion.",
    (Query('max by (model, version) (driftline_inference_model_info{alias="champion"})', table=True),),
    kind="stat",
    width=4,
    height=4,
    stat_field="/^version$/",
)
DRIFT_STATE = Panel(
    "Drift state",
    "Debounced state of each detector on each stream (alert: DriftlineDriftDetected when DRIFT).",
    (Query("driftline_drift_state", "{{stream}} · {{detector}}"),),
    kind="stat",
    width=8,
    height=4,
    mappings=DRIFT_STATE_MAPPINGS,
)
LIVE_ACCURACY = Panel(
    "Live accuracy (champion)",
    "Accuracy over the last joined feedback labels of the champion.",
    (Query('driftline_model_live_metric{metric="accuracy", role="champion"}', "v{{version}}"),),
    kind="stat",
    width=4,
    height=4,
    unit="percentunit",
    decimals=1,
    thresholds=((0.8, "green"),),
)


OVERVIEW = Dashboard(
    uid="driftline-overview",
    title="Driftline / Overview",
    description="The whole loop at a glance: traffic, latency, lag, drift, the champion and its accuracy.",
    filename="overview.json",
    rows=(
        Row(
            "Health",
            (
                TARGETS_UP,
                Panel(
                    "Events in",
                    "Raw events/s whose outcome ingestion delivered (clean, dead-lettered or duplicate).",
                    (Query(rate("driftline_ingestion_consumed_total")),),
                    kind="stat",
                    width=3,
                    height=4,
                    unit="ops",
                ),
                Panel(
                    "Predictions",
                    "Rows/s scored by the inference service (all roles).",
                    (Query(rate("driftline_inference_predictions_total")),),
                    kind="stat",
                    width=3,
                    height=4,
                    unit="ops",
                ),
                Panel(
                    "Prediction p99 (5m)",
                    "p99 of the whole Predict call over 5 minutes; SLO 50 ms.",
                    (Query('stage:driftline_inference_stage_seconds:p99_rate5m{stage="total"}'),),
                    kind="stat",
                    width=3,
                    height=4,
                    unit="s",
                    thresholds=((0.05, "red"),),
                ),
                CHAMPION,
                LIVE_ACCURACY,
                replace(DRIFT_STATE, width=7),
            ),
        ),
        Row(
            "Flow",
            (
                Panel(
                    "Throughput through the loop",
                    "Messages/s at each stage: raw events in, clean events out, feature vectors "
                    "published, rows scored, feedback labels joined.",
                    (
                        Query(rate("driftline_ingestion_consumed_total"), "raw events in"),
                        Query(rate("driftline_ingestion_clean_total"), "clean events"),
                        Query(rate("driftline_features_vectors_published_total"), "feature vectors"),
                        Query(rate("driftline_inference_predictions_total"), "predictions"),
                        Query(rate("driftline_feedback_labels_total"), "feedback labels"),
                    ),
                    unit="ops",
                ),
                PREDICTION_LATENCY,
                CONSUMER_LAG,
                DEAD_LETTERS,
            ),
        ),
    ),
)

STREAMING = Dashboard(
    uid="driftline-streaming",
    title="Driftline / Streaming & Kafka",
    description="Kafka consumers and producers of all services; ingestion's accounting and data quality.",
    filename="streaming.json",
    rows=(
        Row(
            "Kafka",
            (
                Panel(
                    "Consumed messages/s by group and topic",
                    "Messages handled by each consumer group (kit consumer loop), batches retried "
                    "after a handler error, and batches held back while a dependency was down "
                    "(alert: DriftlineDependencyUnavailable).",
                    (
                        Query(
                            rate("driftline_kafka_consumed_total", "group, topic"), "{{group}} · {{topic}}"
                        ),
                        Query(
                            rate("driftline_kafka_handler_retries_total", "group"),
                            "retried batches · {{group}}",
                        ),
                        Query(
                            rate("driftline_outage_waits_total", "consumer"),
                            "waiting for a dependency · {{consumer}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Produced messages/s by topic",
                    "Messages the broker acknowledged, per topic (kit producer), and messages it did not.",
                    (
                        Query(rate("driftline_kafka_produced_total", "topic"), "{{topic}}"),
                        Query(rate("driftline_kafka_delivery_failures_total", "topic"), "failed · {{topic}}"),
                    ),
                    unit="ops",
                ),
                CONSUMER_LAG,
                Panel(
                    "Batch handling time by group",
                    "Time to handle, deliver and commit one consumed batch.",
                    (
                        Query(quantile(0.99, "driftline_kafka_batch_seconds", "group"), "{{group}} p99"),
                        Query(quantile(0.5, "driftline_kafka_batch_seconds", "group"), "{{group}} p50"),
                    ),
                    unit="s",
                ),
                DEAD_LETTERS,
                Panel(
                    "Dead-letter ratio by group and topic (5m)",
                    "Share of the consumed messages that were dead-lettered (alert: "
                    "DriftlineDeadLetterRateHigh at 10% for 5m).",
                    (
                        Query(
                            "group_topic:driftline_kafka_dead_lettered:ratio_rate5m", "{{group}} · {{topic}}"
                        ),
                    ),
                    unit="percentunit",
                    thresholds=((0.1, "red"),),
                ),
            ),
        ),
        Row(
            "Ingestion",
            (
                Panel(
                    "Ingestion accounting",
                    "consumed = clean + dead-lettered + duplicates, per second.",
                    (
                        Query(rate("driftline_ingestion_consumed_total"), "consumed"),
                        Query(rate("driftline_ingestion_clean_total"), "clean"),
                        Query(rate("driftline_ingestion_dead_lettered_total"), "dead-lettered"),
                        Query(rate("driftline_ingestion_duplicates_total"), "duplicates"),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Ingestion dead letters/s by reason",
                    "Contract violations by reason code.",
                    (Query(rate("driftline_ingestion_dead_lettered_total", "reason"), "{{reason}}"),),
                    unit="ops",
                    stack=True,
                ),
                Panel(
                    "Data quality: null ratio by field",
                    "Share of recent decoded events where the field is missing or null.",
                    (Query("max by (field) (driftline_ingestion_field_null_ratio)", "{{field}}"),),
                    unit="percentunit",
                    width=8,
                ),
                Panel(
                    "Data quality: invalid ratio by field",
                    "Share of recent decoded events where the field has the wrong type or format.",
                    (Query("max by (field) (driftline_ingestion_field_invalid_ratio)", "{{field}}"),),
                    unit="percentunit",
                    width=8,
                ),
                Panel(
                    "Data quality: out-of-range ratio by field",
                    "Share of recent decoded events breaking a range, enum, length, pattern or "
                    "event-time rule.",
                    (Query("max by (field) (driftline_ingestion_field_out_of_range_ratio)", "{{field}}"),),
                    unit="percentunit",
                    width=8,
                ),
            ),
        ),
    ),
)

FEATURES = Dashboard(
    uid="driftline-features",
    title="Driftline / Features",
    description="The features service (windowed aggregates into Redis) and the online store's reads.",
    filename="features.json",
    rows=(
        Row(
            "Write path",
            (
                Panel(
                    "Events/s by outcome",
                    "Clean events seen by the features service: added, late, duplicate (a replay), "
                    "too_late (dropped); and events dead-lettered.",
                    (
                        Query(rate("driftline_features_events_total", "outcome"), "{{outcome}}"),
                        Query(
                            rate("driftline_features_dead_lettered_total", "reason"),
                            "dead-lettered · {{reason}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Freshness: event time to visible in Redis",
                    "p50 and p99 of the time from an event's event time to its features being "
                    "readable (alert: DriftlineFeatureFreshnessSlow over 60 s).",
                    latency("driftline_features_freshness_seconds", "feature_set", legend="{{feature_set}}"),
                    unit="s",
                    thresholds=((60, "red"),),
                ),
                Panel(
                    "Feature vectors published/s",
                    "Feature vectors acknowledged by the broker, per feature set.",
                    (
                        Query(
                            rate("driftline_features_vectors_published_total", "feature_set"),
                            "{{feature_set}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Batch processing time",
                    "Time to process one batch: state round trips, computation, publication.",
                    latency("driftline_features_batch_seconds"),
                    unit="s",
                ),
                Panel(
                    "Late events/s",
                    "Events older than their entity's newest one, by disposition; and batches retried.",
                    (
                        Query(rate("driftline_features_late_events_total", "disposition"), "{{disposition}}"),
                        Query(rate("driftline_features_batch_retries_total"), "batch retries"),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Offline store",
                    "Rows/s appended to the Parquet offline store and rows waiting after a failed write.",
                    (
                        Query(
                            rate("driftline_features_offline_rows_total", "feature_set"),
                            "rows/s {{feature_set}}",
                        ),
                        Query("sum(driftline_features_offline_pending_rows)", "pending rows"),
                        Query(rate("driftline_features_offline_rows_dropped_total"), "dropped rows/s"),
                    ),
                ),
            ),
        ),
        Row(
            "Read path (online store)",
            (
                Panel(
                    "Entity reads by status (share)",
                    "Share of entity vectors read as ok, stale (a value older than its TTL) or "
                    "missing (alert: DriftlineFeaturesStale at 10% stale for 5m).",
                    (
                        Query(
                            share("driftline_featurestore_entity_reads_total", "feature_set", "status"),
                            "{{feature_set}} · {{status}}",
                        ),
                    ),
                    unit="percentunit",
                    stack=True,
                    maximum=1,
                ),
                Panel(
                    "Feature age on read",
                    "Age (read time minus event time) of the oldest value in each entity vector read.",
                    latency(
                        "driftline_featurestore_feature_age_seconds", "feature_set", legend="{{feature_set}}"
                    ),
                    unit="s",
                ),
                Panel(
                    "Online-store read latency",
                    "One pipelined Redis round trip, any number of entities.",
                    latency("driftline_featurestore_read_seconds", "feature_set", legend="{{feature_set}}"),
                    unit="s",
                ),
                Panel(
                    "Entity reads/s",
                    "Entity vectors read from the online store, by status.",
                    (Query(rate("driftline_featurestore_entity_reads_total", "status"), "{{status}}"),),
                    unit="ops",
                ),
            ),
        ),
    ),
)

INFERENCE = Dashboard(
    uid="driftline-inference",
    title="Driftline / Inference",
    description="Requests, per-stage latency, dynamic batching, the models in service, the prediction log.",
    filename="inference.json",
    rows=(
        Row(
            "Serving",
            (
                Panel(
                    "Serving",
                    "1 once a champion is loaded and warm (alert: DriftlineNoModelLoaded).",
                    (Query("driftline_inference_serving", "{{instance}}"),),
                    kind="stat",
                    width=4,
                    height=4,
                    thresholds=((1, "green"),),
                    mappings=[
                        {
                            "type": "value",
                            "options": {
                                "0": {"text": "no model", "color": "red"},
                                "1": {"text": "serving", "color": "green"},
                            },
                        }
                    ],
                ),
                CHAMPION,
                Panel(
                    "Models in service",
                    "Model version per alias (champion, challenger).",
                    (Query("max by (alias, model, version) (driftline_inference_model_info)", table=True),),
                    kind="stat",
                    width=8,
                    height=4,
                    stat_field="/^version$/",
                ),
                Panel(
                    "Execution provider",
                    "The ONNX Runtime execution provider the models run on.",
                    (Query("driftline_inference_execution_provider == 1", table=True),),
                    kind="stat",
                    width=8,
                    height=4,
                    stat_field="/^provider$/",
                ),
            ),
        ),
        Row(
            "Requests and latency",
            (
                Panel(
                    "Requests/s by method and status",
                    "Calls answered, by gRPC method and status code; and requests refused before "
                    "scoring (queue full, deadline passed, cancelled).",
                    (
                        Query(
                            rate("driftline_inference_requests_total", "method, code"), "{{method}} {{code}}"
                        ),
                        Query(rate("driftline_inference_rejected_total", "reason"), "rejected · {{reason}}"),
                    ),
                    unit="reqps",
                ),
                PREDICTION_LATENCY,
                Panel(
                    "Latency p99 by stage",
                    "features: online-store read; queue: wait for a batch; model: the batch's session "
                    "run; total: the whole call.",
                    (Query(quantile(0.99, "driftline_inference_stage_seconds", "stage"), "{{stage}}"),),
                    unit="s",
                ),
                Panel(
                    "Latency p50 by stage",
                    "Median of each stage.",
                    (Query(quantile(0.5, "driftline_inference_stage_seconds", "stage"), "{{stage}}"),),
                    unit="s",
                ),
                Panel(
                    "Predictions/s by model role",
                    "Rows scored by the champion, a canary challenger or a shadow challenger.",
                    (Query(rate("driftline_inference_predictions_total", "role"), "{{role}}"),),
                    unit="ops",
                    stack=True,
                    width=24,
                ),
            ),
        ),
        Row(
            "Batching",
            (
                Panel(
                    "Rows and requests per model run",
                    "Mean rows per batch and mean requests merged into one model run.",
                    (
                        Query(mean("driftline_inference_batch_size", "alias"), "rows · {{alias}}"),
                        Query(mean("driftline_inference_batch_requests", "alias"), "requests · {{alias}}"),
                    ),
                ),
                Panel(
                    "Queue depth",
                    "Requests waiting for a batch, per alias.",
                    (Query("sum by (alias) (driftline_inference_queue_depth)", "{{alias}}"),),
                ),
            ),
        ),
        Row(
            "Models and prediction log",
            (
                Panel(
                    "Model swaps, load failures and data plane restarts",
                    "Models put live, models that failed to fetch, verify, load or warm "
                    "(alert: DriftlineModelLoadFailed), and restarts of the compiled data plane "
                    "that serves (alert: DriftlineDataPlaneRestarted), in the last hour.",
                    (
                        Query(
                            "sum by (alias) (increase(driftline_inference_model_swaps_total[1h]))",
                            "swaps · {{alias}}",
                        ),
                        Query(
                            "sum by (alias, reason)"
                            " (increase(driftline_inference_model_load_failures_total[1h]))",
                            "failures · {{alias}} {{reason}}",
                        ),
                        Query(
                            "sum(increase(driftline_inference_data_plane_restarts_total[1h]))",
                            "data plane restarts",
                        ),
                    ),
                ),
                Panel(
                    "Prediction log",
                    "Records waiting to be sent to the predictions topic, and records dropped "
                    "(alert: DriftlinePredictionLogDropping).",
                    (
                        Query("sum(driftline_inference_prediction_log_buffered)", "buffered"),
                        Query(
                            rate("driftline_inference_prediction_log_dropped_total", "reason"),
                            "dropped/s · {{reason}}",
                        ),
                    ),
                ),
                Panel(
                    "Model events",
                    "Model events read from the registry topic, by type and whether they applied; and "
                    "shadow scorings skipped.",
                    (
                        Query(
                            rate("driftline_inference_model_events_total", "type, applied"),
                            "{{type}} applied={{applied}}",
                        ),
                        Query(rate("driftline_inference_shadow_skipped_total"), "shadow skipped"),
                    ),
                    unit="ops",
                    width=24,
                ),
            ),
        ),
    ),
)

DRIFT = Dashboard(
    uid="driftline-drift",
    title="Driftline / Drift & Models",
    description="Drift detectors, feedback labels and live model quality, retrains and the registry.",
    filename="drift.json",
    rows=(
        Row(
            "Drift",
            (
                DRIFT_STATE,
                CHAMPION,
                Panel(
                    "Reference version",
                    "Model version whose reference sample the drift detectors compare against.",
                    (Query("driftline_drift_reference_version", "{{model}}"),),
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Last promoted version",
                    "Version the trainer most recently promoted to champion.",
                    (Query("driftline_trainer_last_promoted_version", "{{model}}"),),
                    kind="stat",
                    width=8,
                    height=4,
                ),
                Panel(
                    "Detector state over time",
                    "0 unknown, 1 no drift, 2 drift, 3 insufficient data.",
                    (Query("driftline_drift_state", "{{stream}} · {{detector}}"),),
                    minimum=0,
                    maximum=3,
                ),
                Panel(
                    "Per-feature p-values (windowed tests)",
                    "Last p-value per feature; a feature drifts when it falls under the test's threshold.",
                    (Query("driftline_drift_feature_p_value", "{{detector}} · {{feature}}"),),
                    minimum=0,
                    maximum=1,
                ),
                Panel(
                    "Per-feature test statistics",
                    "Last test statistic per feature and detector.",
                    (Query("driftline_drift_feature_statistic", "{{detector}} · {{feature}}"),),
                ),
                Panel(
                    "Detector verdicts and reports/s",
                    "Rows fed to the detectors per stream, raw verdicts by status, drift reports and "
                    "performance degradations published.",
                    (
                        Query(rate("driftline_drift_events_total", "stream"), "rows · {{stream}}"),
                        Query(rate("driftline_drift_verdicts_total", "status"), "verdicts · {{status}}"),
                        Query(rate("driftline_drift_reports_total", "status"), "reports · {{status}}"),
                        Query(
                            rate("driftline_performance_degradations_total", "metric"),
                            "degradations · {{metric}}",
                        ),
                    ),
                    unit="ops",
                ),
            ),
        ),
        Row(
            "Live model quality",
            (
                Panel(
                    "Live accuracy by version",
                    "Accuracy over the last joined labels, per model version and role.",
                    (Query('driftline_model_live_metric{metric="accuracy"}', "v{{version}} {{role}}"),),
                    unit="percentunit",
                    maximum=1,
                ),
                Panel(
                    "Live precision, recall, F1 and AUC",
                    "Over the last joined labels, per model version and role.",
                    (
                        Query(
                            'driftline_model_live_metric{metric!="accuracy"}',
                            "v{{version}} {{role}} {{metric}}",
                        ),
                    ),
                    unit="percentunit",
                    maximum=1,
                ),
                Panel(
                    "Label lag",
                    "Mean time from a prediction to its feedback label, over the window.",
                    (Query("driftline_model_label_lag_seconds", "v{{version}} {{role}}"),),
                    unit="s",
                ),
                Panel(
                    "Feedback labels/s by join outcome",
                    "Labels by join outcome; and labels and predictions held for the join.",
                    (
                        Query(rate("driftline_feedback_labels_total", "outcome"), "{{outcome}}"),
                        Query("sum(driftline_feedback_pending_labels)", "pending labels"),
                        Query("sum(driftline_feedback_predictions_held)", "predictions held"),
                    ),
                ),
            ),
        ),
        Row(
            "Retraining and registry",
            (
                Panel(
                    "Retrains by outcome",
                    "Retrains in the time range: promoted, rejected by the gate, pending approval, failed "
                    "(alert: DriftlineRetrainFailed).",
                    (
                        Query(
                            "sum by (outcome) (increase(driftline_trainer_runs_total[$__range]))",
                            "{{outcome}}",
                        ),
                    ),
                    kind="stat",
                    width=8,
                ),
                Panel(
                    "Retrain duration by stage (mean)",
                    "Mean wall time of each retrain stage (dataset, train, convert, evaluate, register, "
                    "promote), and of the whole retrain.",
                    (
                        Query(
                            "sum by (stage) (driftline_trainer_stage_seconds_sum)"
                            " / sum by (stage) (driftline_trainer_stage_seconds_count)",
                            "{{stage}}",
                        ),
                        Query(
                            "sum(driftline_trainer_retrain_seconds_sum)"
                            " / sum(driftline_trainer_retrain_seconds_count)",
                            "whole retrain",
                        ),
                    ),
                    unit="s",
                    width=16,
                ),
                Panel(
                    "Retrain triggers",
                    "Triggers received by kind (drift, degradation, manual) and what the debouncer did.",
                    (
                        Query(
                            "sum by (kind, disposition)"
                            " (increase(driftline_trainer_triggers_total[$__range]))",
                            "{{kind}} · {{disposition}}",
                        ),
                    ),
                    kind="stat",
                    width=8,
                ),
                Panel(
                    "Registry",
                    "Versions registered and alias compare-and-swap attempts by result, in the time range; "
                    "change events waiting in the outbox, failed outbox publications, and artifacts "
                    "of archived versions collected.",
                    (
                        Query(
                            "sum(increase(driftline_registry_versions_registered_total[$__range]))",
                            "registered",
                        ),
                        Query(
                            "sum by (result) (increase(driftline_registry_alias_moves_total[$__range]))",
                            "alias moves · {{result}}",
                        ),
                        Query("sum(driftline_registry_outbox_pending)", "outbox pending"),
                        Query(
                            "sum(increase(driftline_registry_outbox_publish_failures_total[$__range]))",
                            "outbox publish failures",
                        ),
                        Query(
                            "sum(increase(driftline_registry_artifacts_collected_total[$__range]))",
                            "artifacts collected",
                        ),
                    ),
                    kind="stat",
                    width=16,
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, STREAMING, FEATURES, INFERENCE, DRIFT)


# --- Rendering -----------------------------------------------------------------------------------


def _target(query: Query, ref_id: str) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "refId": ref_id,
    }
    if query.table:
        target.update(format="table", instant=True, range=False)
    else:
        target.update(range=True)
    return target


def _field_config(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "blue" if panel.kind == "stat" else "green", "value": None}]
    if panel.thresholds and panel.thresholds[0][1] == "green":
        # A "good above" threshold: red below it.
        steps = [{"color": "red", "value": None}]
    steps += [{"color": color, "value": value} for value, color in panel.thresholds]
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
        "thresholds": {"mode": "absolute", "steps": steps},
        "mappings": panel.mappings,
    }
    for key, value in (("decimals", panel.decimals), ("min", panel.minimum), ("max", panel.maximum)):
        if value is not None:
            defaults[key] = value
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 8,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"},
        }
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": panel.stat_field},
            "orientation": "auto",
            "textMode": "value_and_name"
            if len(panel.queries) > 1 or "{{" in panel.queries[0].legend
            else "auto",
            "colorMode": "value",
            "graphMode": "none" if panel.stat_field else "area",
            "justifyMode": "auto",
            "showPercentChange": False,
            "wideLayout": True,
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


class _Layout:
    """Places panels left to right, wrapping at the grid width."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def new_row(self) -> dict[str, int]:
        self.newline()
        position = {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self.y}
        self.y += 1
        return position

    def newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def place(self, width: int, height: int) -> dict[str, int]:
        if self.x + width > GRID_WIDTH:
            self.newline()
        position = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.x += width
        self.row_height = max(self.row_height, height)
        return position

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _panel(panel: Panel, layout: _Layout) -> dict[str, Any]:
    return {
        "id": layout.take_id(),
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(panel.width, panel.height),
        "targets": [_target(q, chr(ord("A") + i)) for i, q in enumerate(panel.queries)],
        "fieldConfig": _field_config(panel),
        "options": _options(panel),
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    layout = _Layout()
    panels: list[dict[str, Any]] = []
    for row in dashboard.rows:
        panels.append(
            {
                "id": layout.take_id(),
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": layout.new_row(),
                "panels": [],
            }
        )
        panels.extend(_panel(p, layout) for p in row.panels)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["driftline"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "tags": ["driftline"],
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
                "title": "Driftline",
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": []},
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    """Every dashboard's file name and its JSON text, as committed."""
    return {d.filename: json.dumps(render(d), indent=2, ensure_ascii=False) + "\n" for d in DASHBOARDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    DASHBOARDS_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        path = DASHBOARDS_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run: python deploy/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
