//! What the data plane serves, as the Python control plane writes it
//! (`driftline.services.inference.dataplane.DataPlaneSpec`): the feature set's layout and
//! freshness rules come from the feature definitions, the model's input, score output and
//! columns from the loaded model, the log's producer settings and topic from the platform's
//! settings and topic declarations. Nothing here is a second copy of a contract.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Address to bind, e.g. `127.0.0.1:0` (port 0: any free port, written to `port_file`).
    pub listen: String,
    /// Written with the bound port once the model is loaded and warm: the readiness signal.
    pub port_file: Option<PathBuf>,
    /// Tokio worker threads.
    pub workers: usize,
    /// Most entities in one call.
    pub max_entities: usize,
    /// Largest request accepted, in bytes.
    pub max_message_bytes: usize,
    /// ONNX Runtime's shared library (the one the Python package ships).
    pub ort_library: String,
    pub store: StoreSpec,
    pub model: ModelSpec,
    pub log: LogSpec,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
    Float64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub name: String,
    pub version: i32,
    pub input: String,
    pub input_dtype: Dtype,
    pub score_output: String,
    /// The model's features, in its input's column order.
    pub feature_names: Vec<String>,
    /// Position of each of the model's features in the store's vector.
    pub columns: Vec<usize>,
    pub threshold: f64,
    pub intra_threads: usize,
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
        let model = &self.model;
        if model.columns.len() != model.feature_names.len() || model.columns.is_empty() {
            return Err("model: one column per feature name".into());
        }
        if let Some(bad) = model.columns.iter().find(|&&c| c >= width) {
            return Err(format!(
                "model: column {bad} is outside the store's {width} features"
            ));
        }
        if self.max_entities == 0 || self.workers == 0 {
            return Err("max_entities and workers must be at least 1".into());
        }
        Ok(())
    }
}
