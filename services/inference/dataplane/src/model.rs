//! A model version on ONNX Runtime's C API (through `ort`, loading the shared library the Python
//! package ships): one session, tuned for small models as the Python runtime tunes its own (one
//! intra-op thread, no inter-op pool, no spinning, every graph optimisation), on CUDA when the
//! spec asks for it and it works (with an I/O binding there, as the Python runtime), checked
//! against its digest and its spec, warmed, then handed to the thread of its batcher (`batch`),
//! which owns it from then on.

use std::time::{Duration, Instant};

use ort::execution_providers::cuda::CuDNNConvAlgorithmSearch;
use ort::execution_providers::{CUDAExecutionProvider, ExecutionProvider};
use ort::io_binding::IoBinding;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionOutputs};
use ort::tensor::{PrimitiveTensorElementType, TensorElementType};
use ort::value::{DynValue, TensorRef, ValueType};
use sha2::{Digest, Sha256};

use prost::Message;

use crate::batch::{self, BatchError, Batcher, Data, Runner, Tensor};
use crate::metrics::BatchMetrics;
use crate::proto::control::ModelSpec;
use crate::proto::inference::PredictionLog;

pub const CPU: &str = "CPUExecutionProvider";
pub const CUDA: &str = "CUDAExecutionProvider";

/// The part a model plays in a prediction, as the prediction log and `served_by` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Champion = 0,
    /// Served to the canary share of entities.
    Challenger = 1,
    /// Scored in the shadow of a call: logged, never returned.
    Shadow = 2,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Champion, Role::Challenger, Role::Shadow];

    pub fn name(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Challenger => "challenger",
            Role::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Float32,
    Float64,
}

impl Dtype {
    /// As numpy names it (the Python service's messages do).
    pub fn numpy(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
        }
    }
}

/// The output element types served; a model with another output is refused at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    F32,
    F64,
    I64,
    I32,
    Bool,
}

impl Kind {
    fn of(ty: TensorElementType) -> Option<Kind> {
        Some(match ty {
            TensorElementType::Float32 => Kind::F32,
            TensorElementType::Float64 => Kind::F64,
            TensorElementType::Int64 => Kind::I64,
            TensorElementType::Int32 => Kind::I32,
            TensorElementType::Bool => Kind::Bool,
            _ => return None,
        })
    }

    fn kserve(self) -> &'static str {
        match self {
            Kind::F32 => "FP32",
            Kind::F64 => "FP64",
            Kind::I64 => "INT64",
            Kind::I32 => "INT32",
            Kind::Bool => "BOOL",
        }
    }
}

/// A model input or output as KServe v2 metadata describes it (-1: a dynamic dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// Batching of the model's runs (the spec's `batching`).
pub type BatchOptions = batch::Options;

pub struct Model {
    pub spec: ModelSpec,
    /// Position of each model column in the store's vector.
    pub columns: Vec<usize>,
    pub dtype: Dtype,
    /// The execution provider its session runs on.
    pub provider: &'static str,
    /// Whether its runs go through an I/O binding (on CUDA, or when the spec asks).
    pub io_binding: bool,
    pub input: TensorMeta,
    pub outputs: Vec<TensorMeta>,
    score_output: usize,
    batcher: Batcher,
    /// Seconds spent loading and warming.
    pub load_seconds: f64,
    /// What every prediction-log record of this model in each role shares, serialized once
    /// (see `log`), in `Role::ALL`'s order.
    log_heads: [Vec<u8>; 3],
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
    if !matches!(spec.device.as_str(), "" | "auto" | "cpu" | "cuda") {
        return Err(ModelError::Invalid(format!(
            "device {:?} is not auto, cpu or cuda",
            spec.device
        )));
    }
    Ok((dtype, columns))
}

/// A session on the spec's device: CUDA when asked for and its provider registers ("cuda" fails
/// otherwise, "auto" falls back to the CPU), else the CPU. Returns the provider it runs on.
fn session(spec: &ModelSpec, bytes: &[u8]) -> Result<(Session, &'static str), ModelError> {
    let builder = || -> Result<_, ort::Error> {
        Session::builder()?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(spec.intra_threads.max(1) as usize)?
            .with_inter_threads(1)?
            // As the Python runtime: idle pool threads (more than one intra-op thread) would
            // spin on the cores the server's workers need.
            .with_intra_op_spinning(false)
    };
    // As the Python runtime sets it: heuristic convolution search, and no TF32 matmuls (they
    // move scores by ~1e-4; the GPU must give the CPU's answers).
    let cuda = CUDAExecutionProvider::default()
        .with_device_id(spec.cuda_device_id as i32)
        .with_conv_algorithm_search(CuDNNConvAlgorithmSearch::Heuristic)
        .with_tf32(false);
    let try_cuda = match spec.device.as_str() {
        "cuda" => true,
        "auto" => cuda.is_available().unwrap_or(false),
        _ => false,
    };
    if try_cuda {
        let on_cuda = builder()
            .and_then(|b| b.with_execution_providers([cuda.build().error_on_failure()]))
            .and_then(|b| b.commit_from_memory(bytes));
        match on_cuda {
            Ok(session) => return Ok((session, CUDA)),
            Err(err) if spec.device == "cuda" => {
                return Err(ModelError::Invalid(format!(
                    "CUDA was asked for and fails: {err}"
                )))
            }
            Err(_) => {}
        }
    }
    Ok((builder()?.commit_from_memory(bytes)?, CPU))
}

fn described(name: &str, ty: &ValueType) -> Option<(TensorMeta, Kind)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let kind = Kind::of(*ty)?;
            Some((
                TensorMeta {
                    name: name.to_string(),
                    datatype: kind.kserve(),
                    shape: shape.to_vec(),
                },
                kind,
            ))
        }
        _ => None,
    }
}

/// The session, owned by the batcher's thread.
struct SessionRunner {
    session: Session,
    input: String,
    dtype: Dtype,
    width: usize,
    outputs: Vec<(String, Kind)>,
    /// Runs go through this binding (see `run_on`); `None`: through `Session::run`.
    binding: Option<IoBinding>,
}

impl SessionRunner {
    fn run_session(&mut self, matrix: &[f64], rows: usize) -> Result<Vec<Tensor>, ort::Error> {
        let shape = [rows, self.width];
        match self.dtype {
            Dtype::Float32 => {
                let narrow: Vec<f32> = matrix.iter().map(|&v| v as f32).collect();
                self.run_on(TensorRef::from_array_view((shape, narrow.as_slice()))?)
            }
            Dtype::Float64 => self.run_on(TensorRef::from_array_view((shape, matrix))?),
        }
    }

    fn run_on<T: PrimitiveTensorElementType + std::fmt::Debug>(
        &mut self,
        input: TensorRef<'_, T>,
    ) -> Result<Vec<Tensor>, ort::Error> {
        let Some(binding) = self.binding.as_mut() else {
            let outputs = self
                .session
                .run(ort::inputs![self.input.as_str() => input])?;
            return extracted(&self.outputs, &outputs);
        };
        // I/O binding, as the Python runtime uses it on CUDA: the input is copied to the device
        // once, straight from the caller's buffer, and each output once into host memory ONNX
        // Runtime allocates for it. Outputs are bound again on every run: a bound output keeps
        // the last run's buffer, which a batch of another size cannot reuse.
        // Made per run (a small allocation): ort's `MemoryInfo` cannot move to the model's thread.
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )?;
        let ran = binding
            .bind_input(self.input.as_str(), &*input)
            .and_then(|()| {
                self.outputs
                    .iter()
                    .try_for_each(|(name, _)| binding.bind_output_to_device(name.as_str(), &host))
            })
            .and_then(|()| {
                let outputs = self.session.run_binding(binding)?;
                extracted(&self.outputs, &outputs)
            });
        // The input borrows the caller's buffer: it must not outlive this call.
        binding.clear();
        ran
    }
}

/// Each of `wanted`'s outputs, copied out of a run's `outputs`.
fn extracted(
    wanted: &[(String, Kind)],
    outputs: &SessionOutputs<'_>,
) -> Result<Vec<Tensor>, ort::Error> {
    wanted
        .iter()
        .map(|(name, kind)| {
            let value = &outputs[name.as_str()];
            match kind {
                Kind::F32 => copied(value, Data::F32),
                Kind::F64 => copied(value, Data::F64),
                Kind::I64 => copied(value, Data::I64),
                Kind::I32 => copied(value, Data::I32),
                Kind::Bool => copied(value, Data::Bool),
            }
        })
        .collect()
}

/// One output of element type `T`, copied out as `wrap` holds it.
fn copied<T: PrimitiveTensorElementType + Clone + std::fmt::Debug>(
    value: &DynValue,
    wrap: fn(Vec<T>) -> Data,
) -> Result<Tensor, ort::Error> {
    let (shape, values) = value.try_extract_tensor::<T>()?;
    Ok(Tensor {
        shape: shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect(),
        data: wrap(values.to_vec()),
    })
}

impl Runner for SessionRunner {
    fn run(&mut self, matrix: &[f64], rows: usize) -> Result<Vec<Tensor>, String> {
        self.run_session(matrix, rows)
            .map_err(|err| err.to_string())
    }
}

/// One score per row: the positive-class column of a probability matrix, or the single column.
fn scores_of(output: &Tensor) -> Result<Vec<f64>, String> {
    let columns = match output.shape.as_slice() {
        [_, c] => (*c).max(1),
        _ => 1,
    };
    let pick = usize::from(columns >= 2);
    let values: Vec<f64> = match &output.data {
        Data::F32(v) => v.chunks(columns).map(|row| f64::from(row[pick])).collect(),
        Data::F64(v) => v.chunks(columns).map(|row| row[pick]).collect(),
        _ => return Err("the score output is not a float tensor".into()),
    };
    Ok(values)
}

impl Model {
    /// Reads, verifies, loads and warms the model `spec` names, then starts its batcher.
    pub fn load(
        spec: &ModelSpec,
        store_width: usize,
        batching: BatchOptions,
        metrics: BatchMetrics,
    ) -> Result<Self, ModelError> {
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
        let (session, provider) = session(spec, &bytes)?;
        let input = session
            .inputs
            .iter()
            .find(|i| i.name == spec.input)
            .and_then(|i| described(&i.name, &i.input_type))
            .map(|(meta, _)| meta)
            .ok_or_else(|| ModelError::Invalid(format!("the model has no input {}", spec.input)))?;
        let mut outputs = Vec::with_capacity(session.outputs.len());
        let mut kinds = Vec::with_capacity(session.outputs.len());
        for output in &session.outputs {
            let (meta, kind) = described(&output.name, &output.output_type).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "output {} is not a tensor of a type the data plane serves",
                    output.name
                ))
            })?;
            kinds.push((output.name.clone(), kind));
            outputs.push(meta);
        }
        let score_output = outputs
            .iter()
            .position(|o| o.name == spec.score_output)
            .ok_or_else(|| {
                ModelError::Invalid(format!("the model has no output {}", spec.score_output))
            })?;
        let io_binding = spec.io_binding || provider == CUDA;
        let binding = if io_binding {
            Some(session.create_binding()?)
        } else {
            None
        };
        let mut runner = SessionRunner {
            session,
            input: spec.input.clone(),
            dtype,
            width: columns.len(),
            outputs: kinds,
            binding,
        };
        // Warm: the first runs of a session allocate its buffers; a model that cannot score a
        // row of zeros at each batch size never serves. The last run of one row seeds the
        // estimate of a run's time.
        let mut typical_run = Duration::ZERO;
        for rows in [64, 8, 1] {
            for _ in 0..3 {
                let started = Instant::now();
                let outputs = runner
                    .run(&vec![0.0; rows * columns.len()], rows)
                    .map_err(ModelError::Invalid)?;
                let scores = scores_of(&outputs[score_output]).map_err(ModelError::Invalid)?;
                if scores.len() != rows {
                    return Err(ModelError::Invalid(format!(
                        "{} scores for {rows} rows",
                        scores.len()
                    )));
                }
                typical_run = started.elapsed();
            }
        }
        let batcher = Batcher::start(
            &format!("model-v{}", spec.version),
            runner,
            batching,
            typical_run,
            metrics,
        )
        .map_err(|e| ModelError::Invalid(format!("cannot start the model's thread: {e}")))?;
        let log_heads = Role::ALL.map(|role| {
            PredictionLog {
                model_name: spec.name.clone(),
                model_version: spec.version,
                feature_names: spec.feature_names.clone(),
                role: role.name().into(),
                ..PredictionLog::default()
            }
            .encode_to_vec()
        });
        Ok(Model {
            spec: spec.clone(),
            columns,
            dtype,
            provider,
            io_binding,
            input,
            outputs,
            score_output,
            batcher,
            load_seconds: started.elapsed().as_secs_f64(),
            log_heads,
        })
    }

    /// Whether `value` is finite in the model's input type (a double beyond float32's range is not).
    pub fn representable(&self, value: f64) -> bool {
        match self.dtype {
            Dtype::Float32 => (value as f32).is_finite(),
            Dtype::Float64 => value.is_finite(),
        }
    }

    /// The fields every prediction-log record of this model in `role` shares, serialized.
    pub fn log_head(&self, role: Role) -> &[u8] {
        &self.log_heads[role as usize]
    }

    /// Every output of the model on `rows` rows of `matrix` (row-major, `width()` wide), run in
    /// the next batch with room for them.
    pub async fn infer(&self, matrix: Vec<f64>, rows: usize) -> Result<Vec<Tensor>, BatchError> {
        self.batcher.run(matrix, rows).await
    }

    /// One score per row of `matrix`.
    pub async fn score(&self, matrix: Vec<f64>, rows: usize) -> Result<Vec<f64>, BatchError> {
        let outputs = self.infer(matrix, rows).await?;
        scores_of(&outputs[self.score_output]).map_err(BatchError::Failed)
    }
}

/// Batching as the spec gives it.
pub fn batch_options(
    max_batch_size: usize,
    max_queue_delay_us: u64,
    queue_capacity: usize,
    inline_below_us: u64,
) -> BatchOptions {
    BatchOptions {
        max_batch_size: max_batch_size.max(1),
        max_queue_delay: Duration::from_micros(max_queue_delay_us),
        queue_capacity: queue_capacity.max(1),
        inline_below: Duration::from_micros(inline_below_us),
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
            device: "auto".into(),
            cuda_device_id: 0,
            io_binding: false,
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
        let mut device = spec();
        device.device = "tpu".into();
        assert_eq!(
            check_spec(&device, 3),
            Err(ModelError::Invalid(
                "device \"tpu\" is not auto, cpu or cuda".into()
            ))
        );
    }

    #[test]
    fn an_unreadable_artifact_is_refused_with_its_path() {
        let options = batch_options(64, 0, 8, 150);
        let metrics = crate::metrics::Metrics::new()
            .expect("metrics")
            .batch("champion");
        let err = Model::load(&spec(), 3, options, metrics)
            .err()
            .expect("no such file");
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/model.onnx"),
            "{err}"
        );
    }
}
