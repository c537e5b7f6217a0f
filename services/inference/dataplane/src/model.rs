//! A model version on ONNX Runtime's C API (through `ort`, loading the shared library the Python
//! package ships): one session, tuned for small models as the Python runtime tunes its own (one
//! intra-op thread, no inter-op pool, every graph optimisation), checked against its digest and
//! its spec, and warmed before it serves.

use std::sync::Mutex;
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use prost::Message;

use crate::proto::control::ModelSpec;
use crate::proto::inference::PredictionLog;

/// The role of every prediction served: the data plane serves the champion only.
pub const ROLE: &str = "champion";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    Float32,
    Float64,
}

pub struct Model {
    pub spec: ModelSpec,
    /// Position of each model column in the store's vector.
    pub columns: Vec<usize>,
    dtype: Dtype,
    // `Session::run` takes `&mut self`; a run of a small model is ~15 µs, so one lock is cheap.
    session: Mutex<Session>,
    /// Seconds spent loading and warming.
    pub load_seconds: f64,
    /// What every prediction-log record of this model shares, serialized once (see `log`).
    pub log_head: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub enum ModelError {
    /// The artifact is not the one the registry recorded.
    Digest(String),
    /// It does not load, does not match its spec, or fails to run.
    Invalid(String),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Digest(why) | ModelError::Invalid(why) => f.write_str(why),
        }
    }
}

impl From<ort::Error> for ModelError {
    fn from(err: ort::Error) -> Self {
        ModelError::Invalid(err.to_string())
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The spec's own consistency, before any file is read: `store_width` features in the store.
fn check_spec(spec: &ModelSpec, store_width: usize) -> Result<(Dtype, Vec<usize>), ModelError> {
    let dtype = match spec.input_dtype.as_str() {
        "float32" => Dtype::Float32,
        "float64" => Dtype::Float64,
        other => {
            return Err(ModelError::Invalid(format!(
                "input dtype {other:?} is not float32 or float64"
            )))
        }
    };
    if spec.columns.is_empty() || spec.columns.len() != spec.feature_names.len() {
        return Err(ModelError::Invalid(format!(
            "{} columns for {} feature names",
            spec.columns.len(),
            spec.feature_names.len()
        )));
    }
    let columns: Vec<usize> = spec.columns.iter().map(|&c| c as usize).collect();
    if let Some(bad) = columns.iter().find(|&&c| c >= store_width) {
        return Err(ModelError::Invalid(format!(
            "column {bad} is outside the store's {store_width} features"
        )));
    }
    if !spec.threshold.is_finite() {
        return Err(ModelError::Invalid("the threshold is not a number".into()));
    }
    Ok((dtype, columns))
}

impl Model {
    /// Reads, verifies, loads and warms the model `spec` names.
    pub fn load(spec: &ModelSpec, store_width: usize) -> Result<Self, ModelError> {
        let started = Instant::now();
        let (dtype, columns) = check_spec(spec, store_width)?;
        let bytes = std::fs::read(&spec.path)
            .map_err(|e| ModelError::Invalid(format!("cannot read {}: {e}", spec.path)))?;
        let digest = sha256_hex(&bytes);
        if digest != spec.sha256 {
            return Err(ModelError::Digest(format!(
                "artifact digest {digest} is not the registry's {}",
                spec.sha256
            )));
        }
        let session = Session::builder()?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(spec.intra_threads.max(1) as usize)?
            .with_inter_threads(1)?
            .commit_from_memory(&bytes)?;
        if !session.inputs.iter().any(|i| i.name == spec.input) {
            return Err(ModelError::Invalid(format!(
                "the model has no input {}",
                spec.input
            )));
        }
        if !session.outputs.iter().any(|o| o.name == spec.score_output) {
            return Err(ModelError::Invalid(format!(
                "the model has no output {}",
                spec.score_output
            )));
        }
        let log_head = PredictionLog {
            model_name: spec.name.clone(),
            model_version: spec.version,
            feature_names: spec.feature_names.clone(),
            role: ROLE.into(),
            ..PredictionLog::default()
        }
        .encode_to_vec();
        let mut model = Model {
            spec: spec.clone(),
            columns,
            dtype,
            session: Mutex::new(session),
            load_seconds: 0.0,
            log_head,
        };
        // Warm: the first runs of a session allocate its buffers; a model that cannot score a
        // row of zeros at each batch size never serves.
        for rows in [1, 8, 64] {
            for _ in 0..3 {
                model.score(&vec![0.0; rows * model.width()], rows)?;
            }
        }
        model.load_seconds = started.elapsed().as_secs_f64();
        Ok(model)
    }

    /// Whether `value` is finite in the model's input type (a double beyond float32's range is not).
    pub fn representable(&self, value: f64) -> bool {
        match self.dtype {
            Dtype::Float32 => (value as f32).is_finite(),
            Dtype::Float64 => value.is_finite(),
        }
    }

    /// Columns of the model's input.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// One score per row of `matrix` (`rows` × `width()`, row-major): the positive-class column
    /// of a probability matrix, or the single score column.
    pub fn score(&self, matrix: &[f64], rows: usize) -> Result<Vec<f64>, ModelError> {
        let shape = [rows, self.width()];
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError::Invalid("a model run panicked".into()))?;
        let outputs = match self.dtype {
            Dtype::Float32 => {
                let narrow: Vec<f32> = matrix.iter().map(|&v| v as f32).collect();
                let input = TensorRef::from_array_view((shape, narrow.as_slice()))?;
                session.run(ort::inputs![self.spec.input.as_str() => input])?
            }
            Dtype::Float64 => {
                let input = TensorRef::from_array_view((shape, matrix))?;
                session.run(ort::inputs![self.spec.input.as_str() => input])?
            }
        };
        let output = &outputs[self.spec.score_output.as_str()];
        let (dims, flat): (Vec<i64>, Vec<f64>) = match output.try_extract_tensor::<f32>() {
            Ok((shape, data)) => (shape.to_vec(), data.iter().map(|&v| f64::from(v)).collect()),
            Err(_) => {
                let (shape, data) = output.try_extract_tensor::<f64>()?;
                (shape.to_vec(), data.to_vec())
            }
        };
        let columns = match dims.as_slice() {
            [_, c] => usize::try_from(*c).unwrap_or(1).max(1),
            _ => 1,
        };
        let pick = usize::from(columns >= 2);
        let scores: Vec<f64> = flat.chunks(columns).map(|row| row[pick]).collect();
        if scores.len() != rows {
            return Err(ModelError::Invalid(format!(
                "{} scores for {} rows",
                scores.len(),
                rows
            )));
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec {
            path: "/nonexistent/model.onnx".into(),
            sha256: "00".into(),
            name: "fraud".into(),
            version: 2,
            input: "input".into(),
            input_dtype: "float32".into(),
            score_output: "probabilities".into(),
            feature_names: vec!["a".into(), "c".into()],
            columns: vec![0, 2],
            threshold: 0.5,
            intra_threads: 1,
        }
    }

    #[test]
    fn digests_are_lower_case_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_consistent_spec_maps_its_columns() {
        assert_eq!(check_spec(&spec(), 3), Ok((Dtype::Float32, vec![0, 2])));
    }

    #[test]
    fn inconsistent_specs_are_refused_before_any_file_is_read() {
        let outside = check_spec(&spec(), 2).unwrap_err();
        assert_eq!(
            outside,
            ModelError::Invalid("column 2 is outside the store's 2 features".into())
        );
        let mut names = spec();
        names.feature_names.pop();
        assert!(matches!(check_spec(&names, 3), Err(ModelError::Invalid(_))));
        let mut dtype = spec();
        dtype.input_dtype = "int64".into();
        assert!(matches!(check_spec(&dtype, 3), Err(ModelError::Invalid(_))));
        let mut threshold = spec();
        threshold.threshold = f64::NAN;
        assert!(matches!(
            check_spec(&threshold, 3),
            Err(ModelError::Invalid(_))
        ));
    }

    #[test]
    fn an_unreadable_artifact_is_refused_with_its_path() {
        let err = Model::load(&spec(), 3).err().expect("no such file");
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/model.onnx"),
            "{err}"
        );
    }
}
