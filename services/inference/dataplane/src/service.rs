//! `driftline.inference.v1.InferenceService` from the model serving: validate, read every
//! entity's features in one round trip, apply the staleness policy, run the model on the call's
//! rows at once, label by threshold, answer, and hand each prediction to the log. Checks run in
//! the Python service's order with its codes and messages; the exceptions (tonic's codes for an
//! oversized message and an expired deadline) are listed in docs/inference.md.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::batch::BatchError;
use crate::jsonlog;
use crate::log::PredictionLogger;
use crate::metrics::Metrics;
use crate::model::{BatchOptions, Model, Role};
use crate::proto::features::{FeatureStatus, FeatureValue};
use crate::proto::inference::inference_service_server::InferenceService;
use crate::proto::inference::{
    PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse, Prediction,
    PredictionLog, PredictionView,
};
use crate::routing::Routing;
use crate::spec::Policy;
use crate::store::{ReadError, Row, Store};

/// A model in one role, swapped whole: a call keeps the `Arc` it started with, so a swap never
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

    /// Puts `model` in (`None`: empties the slot); returns the one it replaced.
    pub fn swap(&self, model: Option<Arc<Model>>) -> Option<Arc<Model>> {
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, model)
    }
}

/// What health reports on: the server as a whole (""), and each API it serves.
pub const SERVICES: [&str; 3] = [
    "",
    crate::proto::inference::inference_service_server::SERVICE_NAME,
    crate::proto::kserve::grpc_inference_service_server::SERVICE_NAME,
];

/// Shadow scorings that may be pending at once; beyond it they are skipped and counted.
const MAX_PENDING_SHADOWS: usize = 256;

pub struct Predictor {
    pub store: Store,
    pub champion: ModelSlot,
    pub challenger: ModelSlot,
    pub routing: Routing,
    /// How each model's runs are batched.
    pub batching: BatchOptions,
    /// Deadline of calls whose client sets none.
    pub default_deadline: Duration,
    pub logger: PredictionLogger,
    /// The model this server serves, loaded or not.
    pub model_name: String,
    pub max_entities: usize,
    pub metrics: Metrics,
    /// Shadow scorings in flight.
    pub shadows: AtomicUsize,
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

/// A batcher's refusal as the Python service's batcher words it.
pub fn batch_status(model: &Model, err: BatchError) -> Status {
    match err {
        BatchError::QueueFull(capacity) => Status::resource_exhausted(format!(
            "inference queue is full ({capacity} requests waiting)"
        )),
        BatchError::Failed(why) => Status::internal(format!(
            "model {} v{} failed: {why}",
            model.spec.name, model.spec.version
        )),
        BatchError::Stopped => Status::internal(format!(
            "model {} v{} has stopped",
            model.spec.name, model.spec.version
        )),
    }
}

/// An entity's features as the store returned them.
#[derive(Clone)]
struct Features {
    values: Vec<f64>,
    event_time: f64,
    age_s: f64,
}

/// One entity of a call: who asked, and what the store holds for it.
#[derive(Clone)]
struct Entity {
    entity_id: String,
    event_id: String,
    features: Features,
}

/// What a model made of some of a call's entities: a score per entity, and the row of its own
/// columns it was scored on (`width` wide).
struct Scored {
    scores: Vec<f64>,
    matrix: Vec<f64>,
    width: usize,
}

impl Scored {
    /// The values the `n`th entity was scored on.
    fn row(&self, n: usize) -> &[f64] {
        &self.matrix[n * self.width..(n + 1) * self.width]
    }
}

impl Predictor {
    /// The live model with `version` (`None`: the champion), as the Python service's
    /// ModelSlots.by_version words its refusals.
    pub fn by_version(&self, version: Option<i32>) -> Result<Arc<Model>, Status> {
        let champion = self.champion.current().ok_or_else(|| self.not_loaded())?;
        let Some(version) = version else {
            return Ok(champion);
        };
        [Some(champion), self.challenger.current()]
            .into_iter()
            .flatten()
            .find(|m| m.spec.version == version)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "version {version} of {} is not loaded",
                    self.model_name
                ))
            })
    }

    /// Versions live in any role, in order.
    pub fn live_versions(&self) -> Vec<i32> {
        let mut versions: Vec<i32> = [self.champion.current(), self.challenger.current()]
            .into_iter()
            .flatten()
            .map(|m| m.spec.version)
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    pub fn not_loaded(&self) -> Status {
        Status::unavailable(format!("no {} champion is loaded yet", self.model_name))
    }

    /// NOT_FOUND for a model other than the one this server serves (empty: this one).
    pub fn check_name(&self, name: &str) -> Result<(), Status> {
        if name.is_empty() || name == self.model_name {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "unknown model '{name}'; this server serves '{}'",
                self.model_name
            )))
        }
    }

    pub async fn predict(
        self: &Arc<Self>,
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
            self.check_name(&request.model_name)?;
            if request.entity_id.is_empty() {
                return Err(Status::invalid_argument("entity_id is empty"));
            }
            ids.push(request.entity_id.as_str());
        }
        let champion = self.champion.current().ok_or_else(|| self.not_loaded())?;
        let challenger = self.challenger.current();
        let canary = self
            .routing
            .canary(&self.model_name, &ids, challenger.is_some());
        let entities = self.read(requests, &ids).await?;

        let mut predictions = Vec::with_capacity(entities.len());
        match (canary, &challenger) {
            (Some(flags), Some(challenger)) => {
                // Each model scores its own entities, at the same time; answers in call order.
                let (on_champion, on_challenger): (Vec<usize>, Vec<usize>) =
                    (0..entities.len()).partition(|&i| !flags[i]);
                let (a, b) = tokio::join!(
                    self.score(&champion, &entities, &on_champion),
                    self.score(challenger, &entities, &on_challenger),
                );
                let (a, b) = (a?, b?);
                let predicted_at = Some(timestamp(epoch_now()));
                let mut at = [0usize, 0usize];
                for (i, entity) in entities.iter().enumerate() {
                    let (model, role, scored, side) = if flags[i] {
                        (challenger, Role::Challenger, &b, 1)
                    } else {
                        (&champion, Role::Champion, &a, 0)
                    };
                    predictions.push(self.served(
                        model,
                        role,
                        entity,
                        scored,
                        at[side],
                        full,
                        predicted_at,
                    ));
                    at[side] += 1;
                }
            }
            _ => {
                let all: Vec<usize> = (0..entities.len()).collect();
                let scored = self.score(&champion, &entities, &all).await?;
                let predicted_at = Some(timestamp(epoch_now()));
                for (i, entity) in entities.iter().enumerate() {
                    predictions.push(self.served(
                        &champion,
                        Role::Champion,
                        entity,
                        &scored,
                        i,
                        full,
                        predicted_at,
                    ));
                }
            }
        }
        if self.routing.shadow {
            if let Some(challenger) = challenger {
                self.shadow(challenger, entities);
            }
        }
        Ok(predictions)
    }

    /// Every entity's features in one round trip, checked: all present, and none stale when the
    /// policy is fail.
    async fn read(&self, requests: &[PredictRequest], ids: &[&str]) -> Result<Vec<Entity>, Status> {
        let read_started = Instant::now();
        let read = self.store.read(ids, epoch_now()).await;
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
            .zip(ids)
            .filter(|(row, _)| matches!(row, Row::Missing))
            .map(|(_, id)| *id)
            .collect();
        if !unknown.is_empty() {
            return Err(Status::not_found(format!(
                "no features for entity {}",
                some_of(&unknown)
            )));
        }
        let mut entities = Vec::with_capacity(rows.len());
        for (row, request) in rows.into_iter().zip(requests) {
            let Row::Found {
                values,
                event_time,
                age_s,
                stale,
            } = row
            else {
                unreachable!("missing rows were refused")
            };
            if self.store.layout.policy() == Policy::Fail && stale > 0 {
                // The first stale feature in the store's order, as the Python service names it.
                let name = self.store.layout.first_stale(age_s).unwrap_or("?");
                return Err(Status::failed_precondition(format!(
                    "feature {name} of {} is STALE and the staleness policy is fail",
                    request.entity_id
                )));
            }
            entities.push(Entity {
                entity_id: request.entity_id.clone(),
                event_id: request.event_id.clone(),
                features: Features {
                    values,
                    event_time,
                    age_s,
                },
            });
        }
        Ok(entities)
    }

    /// `model` on the entities at `rows`, each on the model's own columns.
    async fn score(
        &self,
        model: &Model,
        entities: &[Entity],
        rows: &[usize],
    ) -> Result<Scored, Status> {
        let width = model.columns.len();
        let mut matrix = Vec::with_capacity(rows.len() * width);
        for &i in rows {
            let values = &entities[i].features.values;
            matrix.extend(model.columns.iter().map(|&c| values[c]));
        }
        // Judged in the model's own precision: a double too large for a float32 input is infinite there.
        if !matrix.iter().all(|&v| model.representable(v)) {
            return Err(Status::failed_precondition(
                "the online store returned a NaN or infinite feature value",
            ));
        }
        if rows.is_empty() {
            return Ok(Scored {
                scores: Vec::new(),
                matrix,
                width,
            });
        }
        let scores = model
            .score(matrix.clone(), rows.len())
            .await
            .map_err(|err| batch_status(model, err))?;
        Ok(Scored {
            scores,
            matrix,
            width,
        })
    }

    /// Logs the `n`th prediction of `scored`; returns its id and label.
    fn log(
        &self,
        model: &Model,
        role: Role,
        entity: &Entity,
        scored: &Scored,
        n: usize,
        predicted_at: Option<prost_types::Timestamp>,
    ) -> (String, i32) {
        let score = scored.scores[n];
        let used = scored.row(n);
        let prediction_id = uuid::Uuid::new_v4().to_string();
        let label = i32::from(score >= model.spec.threshold);
        self.logger.log(
            model.log_head(role),
            &PredictionLog {
                prediction_id: prediction_id.clone(),
                entity_id: entity.entity_id.clone(),
                event_id: entity.event_id.clone(),
                score,
                label,
                feature_values: used.to_vec(),
                predicted_at,
                ..PredictionLog::default()
            },
        );
        self.metrics.predictions_by_role[role as usize].inc();
        (prediction_id, label)
    }

    /// The `n`th prediction of `scored`, logged, as the call's answer holds it.
    #[allow(clippy::too_many_arguments)]
    fn served(
        &self,
        model: &Model,
        role: Role,
        entity: &Entity,
        scored: &Scored,
        n: usize,
        full: bool,
        predicted_at: Option<prost_types::Timestamp>,
    ) -> Prediction {
        let (prediction_id, label) = self.log(model, role, entity, scored, n, predicted_at);
        let Features {
            event_time, age_s, ..
        } = entity.features;
        let features = if full {
            let used = scored.row(n);
            let stamp = Some(timestamp(event_time));
            used.iter()
                .zip(&model.columns)
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
        Prediction {
            prediction_id,
            entity_id: entity.entity_id.clone(),
            score: scored.scores[n],
            label,
            model_name: model.spec.name.clone(),
            model_version: model.spec.version,
            max_feature_age_seconds: age_s,
            features,
            served_by: role.name().into(),
        }
    }

    /// Scores the call's entities on the challenger after the call, logging each as a shadow
    /// prediction; a shadow that fails is logged as a warning and never touches the call.
    fn shadow(self: &Arc<Self>, challenger: Arc<Model>, entities: Vec<Entity>) {
        if self.shadows.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_SHADOWS {
            self.shadows.fetch_sub(1, Ordering::AcqRel);
            self.metrics.shadow_skipped.inc();
            return;
        }
        let predictor = self.clone();
        tokio::spawn(async move {
            let all: Vec<usize> = (0..entities.len()).collect();
            match predictor.score(&challenger, &entities, &all).await {
                Ok(scored) => {
                    let predicted_at = Some(timestamp(epoch_now()));
                    for (n, entity) in entities.iter().enumerate() {
                        predictor.log(&challenger, Role::Shadow, entity, &scored, n, predicted_at);
                    }
                }
                Err(status) => jsonlog::emit(
                    "warning",
                    "shadow_failed",
                    json!({"model": challenger.spec.name, "version": challenger.spec.version, "error": status.message()}),
                ),
            }
            predictor.shadows.fetch_sub(1, Ordering::AcqRel);
        });
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

impl Predictor {
    /// Starts timing a call to `method`: it is counted by method and status when it ends
    /// (`Observed::finish`), and as CANCELLED when the client goes away first (tonic drops the
    /// call's future, and the guard with it), as the Python service counts it.
    pub fn observe(&self, method: &'static str) -> Observed<'_> {
        Observed {
            predictor: self,
            method,
            started: Instant::now(),
            finished: false,
        }
    }

    fn count(&self, method: &str, started: Instant, code: Code) {
        self.metrics
            .total_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .with_label_values(&[method, code_name(code)])
            .inc();
    }
}

/// One call being served (`Predictor::observe`).
pub struct Observed<'a> {
    predictor: &'a Predictor,
    method: &'static str,
    started: Instant,
    finished: bool,
}

impl Observed<'_> {
    /// Counts the call by its answer's status and times it whole.
    pub fn finish<T>(mut self, result: &Result<T, Status>) {
        self.finished = true;
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.predictor.count(self.method, self.started, code);
    }
}

impl Drop for Observed<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.predictor
                .count(self.method, self.started, Code::Cancelled);
        }
    }
}

/// gRPC's code for a request over the size limit, RESOURCE_EXHAUSTED, where tonic's decoder
/// answers OUT_OF_RANGE (its refusal is written into the response's headers before any handler
/// runs, so it is rewritten there, by a layer around every service).
pub fn oversized_is_resource_exhausted<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() == Code::OutOfRange
        && status
            .message()
            .starts_with("Error, decoded message length too large")
    {
        let _ = Status::resource_exhausted(status.message()).add_header(response.headers_mut());
    }
    response
}

/// How much earlier than the client's deadline a call is given up here. tonic enforces the
/// `grpc-timeout` header too, from a timer started a few microseconds before the handler's, and
/// answers CANCELLED "Timeout expired"; giving up first makes the answer gRPC's
/// DEADLINE_EXCEEDED, which the client's own timer would give it anyway.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(1);

/// A `grpc-timeout` header's value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs `work` within the client's deadline, or `default` when it set none; past it, the call
/// is dropped (which takes it out of its batch) and answers DEADLINE_EXCEEDED.
pub async fn within<T>(
    default: Duration,
    metadata: &MetadataMap,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let client = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout);
    let (limit, message) = match client {
        Some(timeout) => (
            timeout.saturating_sub(AHEAD_OF_TONIC),
            "the client's deadline passed".to_string(),
        ),
        None => (
            default,
            format!(
                "no answer within the default deadline of {} s",
                default.as_secs_f64()
            ),
        ),
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded(message)))
}

#[tonic::async_trait]
impl InferenceService for Service {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let call = self.0.observe("Predict");
        let (metadata, _, request) = request.into_parts();
        let work = self.0.predict(std::slice::from_ref(&request), request.view);
        let result = within(self.0.default_deadline, &metadata, work).await;
        call.finish(&result);
        let mut predictions = result?;
        Ok(Response::new(PredictResponse {
            prediction: predictions.pop(),
        }))
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let call = self.0.observe("PredictBatch");
        let (metadata, _, request) = request.into_parts();
        let work = self.0.predict(&request.requests, request.view);
        let result = within(self.0.default_deadline, &metadata, work).await;
        call.finish(&result);
        Ok(Response::new(PredictBatchResponse {
            predictions: result?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_malformed_ones_do_not() {
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            grpc_timeout("199987u"),
            Some(Duration::from_micros(199_987))
        );
        assert_eq!(grpc_timeout("5m"), Some(Duration::from_millis(5)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "12x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_call_past_the_clients_deadline_answers_deadline_exceeded() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "20m".parse().unwrap());
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), Status>(())
        };
        let status = within(Duration::from_secs(10), &metadata, slow)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(status.message(), "the client's deadline passed");
        let fast = async { Ok::<u8, Status>(7) };
        assert_eq!(
            within(Duration::from_secs(10), &metadata, fast)
                .await
                .unwrap(),
            7
        );
    }
}
