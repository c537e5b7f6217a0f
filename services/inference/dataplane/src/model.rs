//! The champion on ONNX Runtime's C API (through `ort`, loading the shared library the Python
//! package ships): one session, tuned for small models as the Python runtime tunes its own
//! (one intra-op thread, no inter-op pool, every graph optimisation), warmed before serving.

use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::spec::{Dtype, ModelSpec};

pub struct Model {
    pub spec: ModelSpec,
    // `Session::run` takes `&mut self`; a run of a small model is ~15 µs, so one lock is cheap.
    session: Mutex<Session>,
}

#[derive(Debug)]
pub struct ModelError(pub String);

impl From<ort::Error> for ModelError {
    fn from(err: ort::Error) -> Self {
        ModelError(err.to_string())
    }
}

impl Model {
    pub fn load(spec: &ModelSpec) -> Result<Self, ModelError> {
        let session = Session::builder()?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(spec.intra_threads)?
            .with_inter_threads(1)?
            .commit_from_file(&spec.path)?;
        if !session.inputs.iter().any(|i| i.name == spec.input) {
            return Err(ModelError(format!("the model has no input {}", spec.input)));
        }
        if !session.outputs.iter().any(|o| o.name == spec.score_output) {
            return Err(ModelError(format!(
                "the model has no output {}",
                spec.score_output
            )));
        }
        let model = Model {
            spec: spec.clone(),
            session: Mutex::new(session),
        };
        // Warm: the first runs of a session allocate its buffers.
        let zeros = vec![0.0; model.width()];
        for _ in 0..10 {
            model.score(&zeros, 1)?;
        }
        Ok(model)
    }

    /// Columns of the model's input.
    pub fn width(&self) -> usize {
        self.spec.columns.len()
    }

    /// One score per row of `matrix` (`rows` × `width()`, row-major): the positive-class column
    /// of a probability matrix, or the single score column.
    pub fn score(&self, matrix: &[f64], rows: usize) -> Result<Vec<f64>, ModelError> {
        let shape = [rows, self.width()];
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError("a model run panicked".into()))?;
        let outputs = match self.spec.input_dtype {
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
        let pick = if columns >= 2 { 1 } else { 0 };
        let scores: Vec<f64> = flat.chunks(columns).map(|row| row[pick]).collect();
        if scores.len() != rows {
            return Err(ModelError(format!(
                "{} scores for {} rows",
                scores.len(),
                rows
            )));
        }
        Ok(scores)
    }
}
