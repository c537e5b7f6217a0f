"""The trainer's Prometheus metrics (served on ``DRIFTLINE_TRAINER_METRICS_PORT``, 9106)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from driftline.services.trainer.runner import RunResult
from driftline.services.trainer.triggers import Offer, Trigger

RETRAIN_SECONDS = Histogram(
    "driftline_trainer_retrain_seconds",
    "Wall time of one retrain, from trigger batch to recorded run.",
    ["model"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
STAGE_SECONDS = Histogram(
    "driftline_trainer_stage_seconds",
    "Wall time of each retrain stage (dataset, train, convert, evaluate, register, promote).",
    ["model", "stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
RUNS = Counter("driftline_trainer_runs_total", "Retrains by outcome.", ["model", "outcome"])
LAST_PROMOTED = Gauge(
    "driftline_trainer_last_promoted_version", "Version most recently promoted to champion.", ["model"]
)
LAST_RUN_TIMESTAMP = Gauge(
    "driftline_trainer_last_run_timestamp_seconds", "When the last retrain finished.", ["model", "outcome"]
)
VERSIONS_ARCHIVED = Counter(
    "driftline_trainer_versions_archived_total",
    "Versions no alias points at that the trainer archived past KEEP_IDLE_VERSIONS.",
    ["model"],
)
TRIGGERS = Counter(
    "driftline_trainer_triggers_total",
    "Retrain triggers received, by kind and what the debouncer did with them.",
    ["kind", "disposition"],
)
TRIGGERS_IGNORED = Counter(
    "driftline_trainer_trigger_messages_ignored_total",
    "Trigger-topic messages that start no retrain (other model, not the champion, no drift, undecodable).",
    ["topic", "reason"],
)
LABELS = Counter(
    "driftline_trainer_labels_total",
    "Feedback labels seen by the label-log consumer, by disposition.",
    ["disposition"],
)


def observe_run(model: str, result: RunResult) -> None:
    RETRAIN_SECONDS.labels(model).observe(result.duration_s)
    for stage, seconds in result.stage_seconds.items():
        STAGE_SECONDS.labels(model, stage).observe(seconds)
    RUNS.labels(model, result.outcome_name).inc()
    LAST_RUN_TIMESTAMP.labels(model, result.outcome_name).set_to_current_time()
    if result.promoted:
        LAST_PROMOTED.labels(model).set(result.version)
    VERSIONS_ARCHIVED.labels(model).inc(len(result.archived))


def observe_offer(trigger: Trigger, offer: Offer) -> None:
    TRIGGERS.labels(trigger.kind, offer.value).inc()
