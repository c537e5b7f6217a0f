//! How the data plane runs, as the Python control plane writes it
//! (`driftline.services.inference.dataplane.build_spec`): the feature set's layout and
//! freshness rules come from the feature definitions, the log's producer settings and topic from
//! the platform's settings and topic declarations. Models arrive later, over the control socket
//! (`driftline.dataplane.v1.DataPlaneControl`). Nothing here is a second copy of a contract.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::routing::Routing;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Address of the public gRPC server, e.g. `127.0.0.1:0` (port 0: any free port).
    pub listen: String,
    /// Address of `/metrics` (Prometheus text format).
    pub metrics_listen: String,
    /// Unix socket of the control service; created by the process, removed when it stops (the
    /// control plane puts it in a directory of its own, mode 0700).
    pub control_socket: PathBuf,
    /// Written once everything listens: `{"port": .., "metrics_port": ..}`.
    pub port_file: PathBuf,
    /// Tokio worker threads.
    pub workers: usize,
    /// The control plane's process: the data plane stops (SIGTERM) when it exits.
    pub parent_pid: Option<u32>,
    /// The model this server serves (the service's `model_name`): a call naming another is
    /// NOT_FOUND, whether or not a version of it is loaded yet.
    pub model_name: String,
    /// Most entities in one call.
    pub max_entities: usize,
    /// Largest request accepted, in bytes.
    pub max_message_bytes: usize,
    /// Deadline of calls whose client sets none.
    pub default_deadline_s: f64,
    pub batching: BatchingSpec,
    /// Shadow or canary routing of the challenger, when one is loaded.
    pub routing: Routing,
    /// ONNX Runtime's shared library (the one the Python package ships).
    pub ort_library: String,
    pub store: StoreSpec,
    pub log: LogSpec,
    /// TLS of the public port (the control socket is a local Unix socket); absent: plaintext.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// TLS of the metrics port (the service's `METRICS_TLS_*`); absent: plaintext.
    #[serde(default)]
    pub metrics_tls: Option<TlsSpec>,
}

/// PEM files of a port's TLS, as the service's `TLS_*` (or `METRICS_TLS_*`) settings name them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The certificate chain the server presents.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// Set: clients must present a certificate this CA bundle signed (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Stale values are served as they are.
    Serve,
    /// Stale values are replaced by their feature's default.
    Default,
    /// A stale or missing value fails the call.
    Fail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    pub url: String,
    /// `{prefix}:{feature_set}:v{version}:`, the entity id follows.
    pub key_prefix: String,
    pub feature_set: String,
    pub names: Vec<String>,
    pub ttls_s: Vec<f64>,
    pub defaults: Vec<f64>,
    pub policy: Policy,
    /// Most time one read may take.
    pub timeout_s: f64,
    /// TLS files of a `rediss://` URL; None: the system's CAs and no client certificate.
    #[serde(default)]
    pub tls: Option<StoreTls>,
}

/// PEM files for a Redis that serves TLS (`DRIFTLINE_REDIS_TLS_*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreTls {
    /// CA bundle the server's certificate must chain to.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate and key, for a server that demands one.
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

/// Dynamic batching of each model's runs (`batch`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingSpec {
    /// Most rows one model run takes (a larger call runs alone).
    pub max_batch_size: usize,
    /// Longest a call waits for its batch to fill, in µs; 0: only what queued while the model ran.
    pub max_queue_delay_us: u64,
    /// Calls that may wait for a batch; more get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// With no queue delay, a model whose typical run is shorter runs a call that finds it idle
    /// at once, on the caller's thread; 0: never.
    pub inline_below_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    pub topic: String,
    /// librdkafka properties (`bootstrap.servers`, `acks`, `enable.idempotence`, ...).
    pub config: BTreeMap<String, String>,
}

impl Spec {
    pub fn check(&self) -> Result<(), String> {
        let store = &self.store;
        let width = store.names.len();
        if width == 0 || store.ttls_s.len() != width || store.defaults.len() != width {
            return Err(format!(
                "store: {} names, {} ttls, {} defaults",
                width,
                store.ttls_s.len(),
                store.defaults.len()
            ));
        }
        if self.max_entities == 0 || self.workers == 0 {
            return Err("max_entities and workers must be at least 1".into());
        }
        let batching = &self.batching;
        if batching.max_batch_size == 0 || batching.queue_capacity == 0 {
            return Err("max_batch_size and queue_capacity must be at least 1".into());
        }
        self.routing.check()?;
        if !(self.default_deadline_s.is_finite() && self.default_deadline_s > 0.0) {
            return Err(format!(
                "default_deadline_s {} is not a positive number of seconds",
                self.default_deadline_s
            ));
        }
        Ok(())
    }
}
