//! Prometheus metrics of the data plane, served as text on `/metrics` by a minimal HTTP/1.1
//! listener (one scrape per connection), over TLS when the service's `METRICS_TLS_*` say so.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::model::Role;

/// The service's metrics (`driftline_inference_*`), named and labelled as the Python service's
/// `metrics.py` defines them, so one set of dashboards and alerts reads whichever path serves
/// (the integration tests compare the two); and the data plane's own (`driftline_dataplane_*`).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Seconds per stage of a call: `features` (the online-store read), `queue` (waiting for a
    /// batch), `model` (one run of a merged batch), `total`.
    pub stage_seconds: HistogramVec,
    // The stages' series, looked up once here rather than by label on every call.
    pub features_seconds: Histogram,
    pub total_seconds: Histogram,
    /// Rows per model run, by alias (role).
    pub batch_size: HistogramVec,
    /// Calls merged into one model run, by alias.
    pub batch_requests: HistogramVec,
    /// Calls waiting for a batch, by alias.
    pub queue_depth: IntGaugeVec,
    /// Calls refused before scoring: `queue_full`, `cancelled` (their caller had gone).
    pub rejected: IntCounterVec,
    /// Calls by method and gRPC status code name.
    pub requests: IntCounterVec,
    /// Predictions made, by role (champion, challenger, shadow).
    pub predictions: IntCounterVec,
    /// Its series per role, in `Role::ALL`'s order: looked up once, not on every prediction.
    pub predictions_by_role: [IntCounter; 3],
    /// Shadow scorings skipped: too many were pending.
    pub shadow_skipped: IntCounter,
    /// Prediction-log records not written, by reason (`queue_full`, `delivery_failed`).
    pub log_dropped: IntCounterVec,
    /// Prediction-log records queued or in flight (sampled every second).
    pub log_buffered: IntGauge,
    /// Prediction-log records produced and acknowledged (`driftline_dataplane_*`).
    pub log_records: IntCounterVec,
    /// 1 for the model version each alias serves.
    pub model_info: IntGaugeVec,
    /// When each alias's model went live.
    pub model_loaded: GaugeVec,
    pub model_swaps: IntCounterVec,
    /// 1 for the execution provider models run on.
    pub execution_provider: IntGaugeVec,
    /// 1 once a champion is loaded and warm.
    pub serving: IntGauge,
    /// Loads this process refused, by role and reason (`driftline_dataplane_*`: the control
    /// plane counts every failed load, these included, in the service's own counter).
    pub model_load_failures: IntCounterVec,
}

/// What one model's batcher reports, in its alias's series.
#[derive(Clone)]
pub struct BatchMetrics {
    pub queue_seconds: Histogram,
    pub model_seconds: Histogram,
    pub batch_size: Histogram,
    pub batch_requests: Histogram,
    pub queue_depth: IntGauge,
    pub queue_full: IntCounter,
    pub cancelled: IntCounter,
}

// From 50 µs, as the Python service's: the stages of one prediction are sub-millisecond on the CPU.
const LATENCY_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

fn histogram(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
}

fn counters(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let stage_seconds = histogram(
            "driftline_inference_stage_seconds",
            "Latency of one request by stage: features (online-store read), queue (wait for a batch), \
             model (the batch's session run), total (the whole call).",
            &["stage"],
            &LATENCY_BUCKETS,
        )?;
        let predictions = counters(
            "driftline_inference_predictions_total",
            "Rows scored, by model role.",
            &["role"],
        )?;
        let metrics = Metrics {
            predictions_by_role: Role::ALL.map(|role| predictions.with_label_values(&[role.name()])),
            predictions,
            features_seconds: stage_seconds.with_label_values(&["features"]),
            total_seconds: stage_seconds.with_label_values(&["total"]),
            stage_seconds,
            batch_size: histogram(
                "driftline_inference_batch_size",
                "Rows per model run.",
                &["alias"],
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0],
            )?,
            batch_requests: histogram(
                "driftline_inference_batch_requests",
                "Requests merged into one model run.",
                &["alias"],
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            )?,
            queue_depth: gauges(
                "driftline_inference_queue_depth",
                "Requests waiting for a batch.",
                &["alias"],
            )?,
            rejected: counters(
                "driftline_inference_rejected_total",
                "Requests refused before scoring: queue full, deadline passed, cancelled.",
                &["reason"],
            )?,
            requests: counters(
                "driftline_inference_requests_total",
                "Calls answered, by method and gRPC status.",
                &["method", "code"],
            )?,
            shadow_skipped: IntCounter::new(
                "driftline_inference_shadow_skipped_total",
                "Shadow scorings skipped because too many were pending.",
            )?,
            log_dropped: counters(
                "driftline_inference_prediction_log_dropped_total",
                "Prediction-log records not written: buffer full or delivery failed. Alert on any.",
                &["reason"],
            )?,
            log_buffered: IntGauge::new(
                "driftline_inference_prediction_log_buffered",
                "Prediction-log records waiting to be sent.",
            )?,
            log_records: counters(
                "driftline_dataplane_prediction_log_records_total",
                "Prediction-log records by outcome: produced, acknowledged.",
                &["outcome"],
            )?,
            model_info: gauges(
                "driftline_inference_model_info",
                "1 for the model version each alias serves (labels: model, alias, version, sha256).",
                &["model", "alias", "version", "sha256"],
            )?,
            model_loaded: GaugeVec::new(
                Opts::new(
                    "driftline_inference_model_loaded_timestamp_seconds",
                    "When the alias's current model went live.",
                ),
                &["alias"],
            )?,
            model_swaps: counters(
                "driftline_inference_model_swaps_total",
                "Models put live, by alias.",
                &["alias"],
            )?,
            execution_provider: gauges(
                "driftline_inference_execution_provider",
                "1 for the ONNX Runtime execution provider the models run on.",
                &["provider"],
            )?,
            serving: IntGauge::new(
                "driftline_inference_serving",
                "1 once a champion is loaded and warm.",
            )?,
            model_load_failures: counters(
                "driftline_dataplane_model_load_failures_total",
                "Model loads the data plane refused, by role and reason; the model in the role kept serving.",
                &["role", "reason"],
            )?,
            registry: Registry::new(),
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.stage_seconds.clone()))?;
        r.register(Box::new(metrics.batch_size.clone()))?;
        r.register(Box::new(metrics.batch_requests.clone()))?;
        r.register(Box::new(metrics.queue_depth.clone()))?;
        r.register(Box::new(metrics.rejected.clone()))?;
        r.register(Box::new(metrics.requests.clone()))?;
        r.register(Box::new(metrics.predictions.clone()))?;
        r.register(Box::new(metrics.shadow_skipped.clone()))?;
        r.register(Box::new(metrics.log_dropped.clone()))?;
        r.register(Box::new(metrics.log_buffered.clone()))?;
        r.register(Box::new(metrics.log_records.clone()))?;
        r.register(Box::new(metrics.model_info.clone()))?;
        r.register(Box::new(metrics.model_loaded.clone()))?;
        r.register(Box::new(metrics.model_swaps.clone()))?;
        r.register(Box::new(metrics.execution_provider.clone()))?;
        r.register(Box::new(metrics.serving.clone()))?;
        r.register(Box::new(metrics.model_load_failures.clone()))?;
        Ok(metrics)
    }

    /// The series a batcher of the model in `alias` reports to.
    pub fn batch(&self, alias: &str) -> BatchMetrics {
        BatchMetrics {
            queue_seconds: self.stage_seconds.with_label_values(&["queue"]),
            model_seconds: self.stage_seconds.with_label_values(&["model"]),
            batch_size: self.batch_size.with_label_values(&[alias]),
            batch_requests: self.batch_requests.with_label_values(&[alias]),
            queue_depth: self.queue_depth.with_label_values(&[alias]),
            queue_full: self.rejected.with_label_values(&["queue_full"]),
            cancelled: self.rejected.with_label_values(&["cancelled"]),
        }
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into memory only fails on metric families that could not be registered.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Answers `GET /metrics` on `listener` until the task is dropped; with `tls`, over TLS only (a
/// handshake that fails or takes over 5 s closes the connection).
pub async fn serve(listener: TcpListener, metrics: Metrics, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => answer(stream, &metrics).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = handshake {
                        answer(stream, &metrics).await;
                    }
                }
            }
        });
    }
}

/// One scrape: the request head, at most 8 KiB within 5 s, then the metrics or a 404.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, metrics: &Metrics) {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
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
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?")
    {
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
    let _ = stream.shutdown().await; // under TLS: the close_notify
}
