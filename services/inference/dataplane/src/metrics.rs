//! Prometheus metrics of the data plane, served as text on `/metrics` by a minimal HTTP/1.1
//! listener (one scrape per connection).

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Seconds per stage of a call: `features` (the online-store read), `queue` (waiting for a
    /// batch), `model` (one run of a merged batch), `total`.
    pub stage_seconds: HistogramVec,
    // The stages' series, looked up once here rather than by label on every call.
    pub features_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub model_seconds: Histogram,
    pub total_seconds: Histogram,
    /// Rows per model run.
    pub batch_rows: Histogram,
    /// Calls waiting for a batch.
    pub queue_depth: IntGauge,
    /// Calls whose caller had gone before their batch formed: left out unrun.
    pub cancelled: IntCounter,
    /// Calls by method and gRPC status code name.
    pub requests: IntCounterVec,
    /// Predictions logged, by role (champion, challenger, shadow).
    pub predictions: IntCounterVec,
    /// Shadow scorings skipped: too many were pending.
    pub shadow_skipped: IntCounter,
    /// Prediction-log records by outcome: produced, acknowledged, dropped_queue_full, delivery_failed.
    pub log_records: IntCounterVec,
    /// 1 for each model version live, with its role and the execution provider it runs on.
    pub model_info: IntGaugeVec,
    pub model_swaps: IntCounterVec,
    /// Loads that failed, by role and reason (digest, invalid): the model in the role kept serving.
    pub model_load_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
        ];
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "driftline_dataplane_stage_seconds",
                "Seconds per stage of a call.",
            )
            .buckets(buckets),
            &["stage"],
        )?;
        let metrics = Metrics {
            features_seconds: stage_seconds.with_label_values(&["features"]),
            queue_seconds: stage_seconds.with_label_values(&["queue"]),
            model_seconds: stage_seconds.with_label_values(&["model"]),
            total_seconds: stage_seconds.with_label_values(&["total"]),
            stage_seconds,
            batch_rows: Histogram::with_opts(
                HistogramOpts::new("driftline_dataplane_batch_rows", "Rows per model run.")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            queue_depth: IntGauge::new(
                "driftline_dataplane_queue_depth",
                "Calls waiting for a batch.",
            )?,
            cancelled: IntCounter::new(
                "driftline_dataplane_cancelled_total",
                "Calls whose caller had gone before their batch formed; not run.",
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "driftline_dataplane_requests_total",
                    "Calls by method and status code.",
                ),
                &["method", "code"],
            )?,
            predictions: IntCounterVec::new(
                Opts::new(
                    "driftline_dataplane_predictions_total",
                    "Predictions made, by the role of the model that made them.",
                ),
                &["role"],
            )?,
            shadow_skipped: IntCounter::new(
                "driftline_dataplane_shadow_skipped_total",
                "Shadow scorings skipped because too many were pending.",
            )?,
            log_records: IntCounterVec::new(
                Opts::new(
                    "driftline_dataplane_prediction_log_records_total",
                    "Prediction-log records by outcome.",
                ),
                &["outcome"],
            )?,
            model_info: IntGaugeVec::new(
                Opts::new(
                    "driftline_dataplane_model_info",
                    "1 for each model version live, with its role and execution provider.",
                ),
                &["model", "role", "version", "provider"],
            )?,
            model_swaps: IntCounterVec::new(
                Opts::new(
                    "driftline_dataplane_model_swaps_total",
                    "Models swapped in, by role.",
                ),
                &["role"],
            )?,
            model_load_failures: IntCounterVec::new(
                Opts::new(
                    "driftline_dataplane_model_load_failures_total",
                    "Model loads that failed, by role and reason; the model in the role kept serving.",
                ),
                &["role", "reason"],
            )?,
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.stage_seconds.clone()))?;
        r.register(Box::new(metrics.batch_rows.clone()))?;
        r.register(Box::new(metrics.queue_depth.clone()))?;
        r.register(Box::new(metrics.cancelled.clone()))?;
        r.register(Box::new(metrics.requests.clone()))?;
        r.register(Box::new(metrics.predictions.clone()))?;
        r.register(Box::new(metrics.shadow_skipped.clone()))?;
        r.register(Box::new(metrics.log_records.clone()))?;
        r.register(Box::new(metrics.model_info.clone()))?;
        r.register(Box::new(metrics.model_swaps.clone()))?;
        r.register(Box::new(metrics.model_load_failures.clone()))?;
        Ok(metrics)
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into memory only fails on metric families that could not be registered.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Answers `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buffer = [0u8; 1024];
            // The request head, at most 8 KiB, within 5 s.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    let n = stream.read(&mut buffer).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buffer[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let (status, body) =
                if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
                    ("200 OK", metrics.render())
                } else {
                    ("404 Not Found", b"not found\n".to_vec())
                };
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        });
    }
}
