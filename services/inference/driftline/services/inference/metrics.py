"""Prometheus metrics of the inference service (one registry per process, as prometheus_client has)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# From 50 µs: the stages of one prediction are sub-millisecond on the CPU.
_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

STAGE_SECONDS = Histogram(
    "driftline_inference_stage_seconds",
    "Latency of one request by stage: features (online-store read), queue (wait for a batch), "
    "model (the batch's session run), total (the whole call).",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "driftline_inference_requests_total", "Calls answered, by method and gRPC status.", ["method", "code"]
)
PREDICTIONS = Counter("driftline_inference_predictions_total", "Rows scored, by model role.", ["role"])
BATCH_SIZE = Histogram(
    "driftline_inference_batch_size",
    "Rows per model run.",
    ["alias"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_REQUESTS = Histogram(
    "driftline_inference_batch_requests",
    "Requests merged into one model run.",
    ["alias"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
QUEUE_DEPTH = Gauge("driftline_inference_queue_depth", "Requests waiting for a batch.", ["alias"])
REJECTED = Counter(
    "driftline_inference_rejected_total",
    "Requests refused before scoring: queue full, deadline passed, cancelled.",
    ["reason"],
)
MODEL_INFO = Gauge(
    "driftline_inference_model_info",
    "1 for the model version each alias serves (labels: model, alias, version, sha256).",
    ["model", "alias", "version", "sha256"],
)
MODEL_LOADED_TIMESTAMP = Gauge(
    "driftline_inference_model_loaded_timestamp_seconds",
    "When the alias's current model went live.",
    ["alias"],
)
MODEL_SWAPS = Counter("driftline_inference_model_swaps_total", "Models put live, by alias.", ["alias"])
MODEL_LOAD_FAILURES = Counter(
    "driftline_inference_model_load_failures_total",
    "Models that failed to fetch, verify, load or warm; the previous one kept serving. Alert on any.",
    ["alias", "reason"],
)
DATA_PLANE_UNREACHABLE = Counter(
    "driftline_inference_data_plane_unreachable_total",
    "Calls to the compiled data plane's control socket that got no answer: the load failed, and "
    "the model in the role kept serving. Alert on any.",
)
DATA_PLANE_RESTARTS = Counter(
    "driftline_inference_data_plane_restarts_total",
    "Times the compiled data plane exited on its own and was started again, its models reloaded. "
    "Alert on any.",
)
EXECUTION_PROVIDER = Gauge(
    "driftline_inference_execution_provider",
    "1 for the ONNX Runtime execution provider the models run on.",
    ["provider"],
)
SERVING = Gauge("driftline_inference_serving", "1 once a champion is loaded and warm.")
DATA_PLANE = Gauge(
    "driftline_inference_data_plane",
    "1 when the compiled data plane serves the APIs, 0 when this process does "
    "(DRIFTLINE_INFERENCE_DATA_PLANE=false): then the data plane's scrape target is down by design.",
)
PREDICTION_LOG_DROPPED = Counter(
    "driftline_inference_prediction_log_dropped_total",
    "Prediction-log records not written: buffer full or delivery failed. Alert on any.",
    ["reason"],
)
PREDICTION_LOG_BUFFERED = Gauge(
    "driftline_inference_prediction_log_buffered", "Prediction-log records waiting to be sent."
)
SHADOW_SKIPPED = Counter(
    "driftline_inference_shadow_skipped_total", "Shadow scorings skipped because too many were pending."
)
MODEL_EVENTS = Counter(
    "driftline_inference_model_events_total",
    "Model events read, by type and whether they applied.",
    ["type", "applied"],
)
