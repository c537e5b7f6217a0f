//! `driftline.inference.v1.InferenceService` from the model serving: validate, read every
//! entity's features in one round trip, apply the staleness policy, run the model on the call's
//! rows at once, label by threshold, answer, and hand each prediction to the log. Checks run in
//! the Python service's order with its codes and messages; the exceptions (tonic's codes for an
//! oversized message and an expired deadline) are listed in docs/inference.md.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tonic::{Code, Request, Response, Status};

use crate::log::PredictionLogger;
use crate::metrics::Metrics;
use crate::model::{Model, ROLE};
use crate::proto::features::{FeatureStatus, FeatureValue};
use crate::proto::inference::inference_service_server::InferenceService;
use crate::proto::inference::{
    PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse, Prediction,
    PredictionLog, PredictionView,
};
use crate::spec::Policy;
use crate::store::{ReadError, Row, Store};

/// The model serving, swapped whole: a call keeps the `Arc` it started with, so a swap never
/// changes the model under a call, and the old model is freed when its last call ends.
#[derive(Default)]
pub struct ModelSlot(RwLock<Option<Arc<Model>>>);

impl ModelSlot {
    pub fn current(&self) -> Option<Arc<Model>> {
        self.0
            .read()
            .map(|slot| slot.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Puts `model` in; returns the one it replaced.
    pub fn swap(&self, model: Arc<Model>) -> Option<Arc<Model>> {
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.replace(model)
    }
}

pub struct Predictor {
    pub store: Store,
    pub model: ModelSlot,
    pub logger: PredictionLogger,
    /// The model this server serves, loaded or not.
    pub model_name: String,
    pub max_entities: usize,
    pub metrics: Metrics,
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn timestamp(epoch_s: f64) -> prost_types::Timestamp {
    let seconds = epoch_s.floor();
    // Truncated, as protobuf's Python Timestamp.FromNanoseconds is given whole nanoseconds.
    let nanos = ((epoch_s - seconds) * 1e9).trunc().min(999_999_999.0);
    prost_types::Timestamp {
        seconds: seconds as i64,
        nanos: nanos as i32,
    }
}

/// Names of the first few entities of a list, as the Python service words them.
fn some_of(ids: &[&str]) -> String {
    let shown = ids.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        format!("{shown} ...")
    } else {
        shown
    }
}

impl Predictor {
    pub async fn predict(
        &self,
        requests: &[PredictRequest],
        view: i32,
    ) -> Result<Vec<Prediction>, Status> {
        // In the Python service's order: the view, the call's size, each request, the model.
        let full = match PredictionView::try_from(view) {
            Ok(PredictionView::Full) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown prediction view {view}"
                )))
            }
        };
        if requests.is_empty() {
            return Err(Status::invalid_argument("no entities to score"));
        }
        if requests.len() > self.max_entities {
            return Err(Status::invalid_argument(format!(
                "{} entities in one call; at most {}",
                requests.len(),
                self.max_entities
            )));
        }
        let mut ids = Vec::with_capacity(requests.len());
        for request in requests {
            if !request.model_name.is_empty() && request.model_name != self.model_name {
                return Err(Status::not_found(format!(
                    "unknown model '{}'; this server serves '{}'",
                    request.model_name, self.model_name
                )));
            }
            if request.entity_id.is_empty() {
                return Err(Status::invalid_argument("entity_id is empty"));
            }
            ids.push(request.entity_id.as_str());
        }
        let Some(model) = self.model.current() else {
            return Err(Status::unavailable(format!(
                "no {} champion is loaded yet",
                self.model_name
            )));
        };
        let now = epoch_now();
        let read_started = Instant::now();
        let read = self.store.read(&ids, now).await;
        self.metrics
            .features_seconds
            .observe(read_started.elapsed().as_secs_f64());
        // Worded as the Python service words them: the kind of failure, not the client's text.
        let rows = read.map_err(|err| {
            let kind = match err {
                ReadError::Timeout => "TimeoutError",
                ReadError::Unreachable(_) => "ConnectionError",
            };
            Status::unavailable(format!("the online store cannot be reached: {kind}"))
        })?;
        let unknown: Vec<&str> = rows
            .iter()
            .zip(&ids)
            .filter(|(row, _)| matches!(row, Row::Missing))
            .map(|(_, id)| *id)
            .collect();
        if !unknown.is_empty() {
            return Err(Status::not_found(format!(
                "no features for entity {}",
                some_of(&unknown)
            )));
        }
        let columns = &model.columns;
        let width = columns.len();
        let mut matrix = Vec::with_capacity(rows.len() * width);
        let mut found = Vec::with_capacity(rows.len());
        for (row, id) in rows.iter().zip(&ids) {
            let Row::Found {
                values,
                event_time,
                age_s,
                stale,
            } = row
            else {
                unreachable!("missing rows were refused")
            };
            if self.store.layout.policy() == Policy::Fail && *stale > 0 {
                // The first stale feature in the store's order, as the Python service names it.
                let name = self.store.layout.first_stale(*age_s).unwrap_or("?");
                return Err(Status::failed_precondition(format!(
                    "feature {name} of {id} is STALE and the staleness policy is fail"
                )));
            }
            matrix.extend(columns.iter().map(|&c| values[c]));
            found.push((*event_time, *age_s));
        }
        // Judged in the model's own precision: a double too large for a float32 input is infinite there.
        if !matrix.iter().all(|&v| model.representable(v)) {
            return Err(Status::failed_precondition(
                "the online store returned a NaN or infinite feature value",
            ));
        }
        let model_started = Instant::now();
        let scored = model.score(&matrix, rows.len());
        self.metrics
            .model_seconds
            .observe(model_started.elapsed().as_secs_f64());
        let scores = scored.map_err(|err| {
            Status::internal(format!(
                "model {} v{} failed: {err}",
                model.spec.name, model.spec.version
            ))
        })?;
        let predicted_at = Some(timestamp(epoch_now()));
        let threshold = model.spec.threshold;
        let mut predictions = Vec::with_capacity(rows.len());
        for (i, (request, score)) in requests.iter().zip(scores).enumerate() {
            let (event_time, age_s) = found[i];
            let used = &matrix[i * width..(i + 1) * width];
            let prediction_id = uuid::Uuid::new_v4().to_string();
            let label = i32::from(score >= threshold);
            self.logger.log(
                &model.log_head,
                &PredictionLog {
                    prediction_id: prediction_id.clone(),
                    entity_id: request.entity_id.clone(),
                    event_id: request.event_id.clone(),
                    score,
                    label,
                    feature_values: used.to_vec(),
                    predicted_at,
                    ..PredictionLog::default()
                },
            );
            let features = if full {
                let stamp = Some(timestamp(event_time));
                used.iter()
                    .zip(columns)
                    .zip(&model.spec.feature_names)
                    .map(|((&value, &c), name)| FeatureValue {
                        name: name.clone(),
                        value,
                        event_time: stamp,
                        status: if self.store.layout.is_stale(c, age_s) {
                            FeatureStatus::Stale as i32
                        } else {
                            FeatureStatus::Ok as i32
                        },
                        age_seconds: age_s,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            predictions.push(Prediction {
                prediction_id,
                entity_id: request.entity_id.clone(),
                score,
                label,
                model_name: model.spec.name.clone(),
                model_version: model.spec.version,
                max_feature_age_seconds: age_s,
                features,
                served_by: ROLE.into(),
            });
        }
        self.metrics.predictions.inc_by(predictions.len() as u64);
        Ok(predictions)
    }
}

pub struct Service(pub Arc<Predictor>);

/// A status code as gRPC's documents and the Python service's metrics name it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Service {
    /// Counts the call by method and status and times it whole.
    fn observe<T>(&self, method: &str, started: Instant, result: &Result<T, Status>) {
        let metrics = &self.0.metrics;
        metrics
            .total_seconds
            .observe(started.elapsed().as_secs_f64());
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        metrics
            .requests
            .with_label_values(&[method, code_name(code)])
            .inc();
    }
}

#[tonic::async_trait]
impl InferenceService for Service {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self
            .0
            .predict(std::slice::from_ref(&request), request.view)
            .await;
        self.observe("Predict", started, &result);
        let mut predictions = result?;
        Ok(Response::new(PredictResponse {
            prediction: predictions.pop(),
        }))
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self.0.predict(&request.requests, request.view).await;
        self.observe("PredictBatch", started, &result);
        Ok(Response::new(PredictBatchResponse {
            predictions: result?,
        }))
    }
}
