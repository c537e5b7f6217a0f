//! `driftline.inference.v1.InferenceService` from the champion: validate, read every entity's
//! features in one round trip, apply the staleness policy, run the model on the call's rows at
//! once, label by threshold, answer, and hand each prediction to the log. Errors carry the
//! same gRPC codes and messages as the Python service's.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use crate::log::PredictionLogger;
use crate::model::Model;
use crate::proto::features::{FeatureStatus, FeatureValue};
use crate::proto::inference::inference_service_server::InferenceService;
use crate::proto::inference::{
    PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse, Prediction,
    PredictionLog, PredictionView,
};
use crate::spec::Policy;
use crate::store::{ReadError, Row, Store};

const ROLE: &str = "champion";

pub struct Predictor {
    pub store: Store,
    pub model: Model,
    pub logger: PredictionLogger,
    pub max_entities: usize,
    pub policy: Policy,
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn timestamp(epoch_s: f64) -> prost_types::Timestamp {
    let seconds = epoch_s.floor();
    let nanos = ((epoch_s - seconds) * 1e9).round().min(999_999_999.0);
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
        let model = &self.model;
        let mut ids = Vec::with_capacity(requests.len());
        for request in requests {
            if !request.model_name.is_empty() && request.model_name != model.spec.name {
                return Err(Status::not_found(format!(
                    "unknown model '{}'; this server serves '{}'",
                    request.model_name, model.spec.name
                )));
            }
            if request.entity_id.is_empty() {
                return Err(Status::invalid_argument("entity_id is empty"));
            }
            ids.push(request.entity_id.as_str());
        }
        let full = match PredictionView::try_from(view) {
            Ok(PredictionView::Full) => true,
            Ok(_) => false,
            Err(_) => return Err(Status::invalid_argument(format!("unknown view {view}"))),
        };
        let now = epoch_now();
        let rows = self.store.read(&ids, now).await.map_err(|err| match err {
            ReadError::Timeout => Status::unavailable("the online store did not answer in time"),
            ReadError::Unreachable(why) => {
                Status::unavailable(format!("the online store cannot be reached: {why}"))
            }
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
        let columns = &model.spec.columns;
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
            if self.policy == Policy::Fail && *stale > 0 {
                // The first stale feature in the store's order, as the Python service names it.
                let name = self.store.layout.first_stale(*age_s).unwrap_or("?");
                return Err(Status::failed_precondition(format!(
                    "feature {name} of {id} is STALE and the staleness policy is fail"
                )));
            }
            matrix.extend(columns.iter().map(|&c| values[c]));
            found.push((*event_time, *age_s));
        }
        if !matrix.iter().all(|v| v.is_finite()) {
            return Err(Status::failed_precondition(
                "the online store returned a NaN or infinite feature value",
            ));
        }
        let scores = model.score(&matrix, rows.len()).map_err(|err| {
            Status::internal(format!(
                "model {} v{} failed: {}",
                model.spec.name, model.spec.version, err.0
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
            self.logger.log(&PredictionLog {
                prediction_id: prediction_id.clone(),
                entity_id: request.entity_id.clone(),
                event_id: request.event_id.clone(),
                model_name: model.spec.name.clone(),
                model_version: model.spec.version,
                score,
                label,
                feature_names: model.spec.feature_names.clone(),
                feature_values: used.to_vec(),
                predicted_at,
                role: ROLE.into(),
            });
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
        Ok(predictions)
    }
}

pub struct Service(pub Arc<Predictor>);

#[tonic::async_trait]
impl InferenceService for Service {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        let view = request.view;
        let mut predictions = self.0.predict(std::slice::from_ref(&request), view).await?;
        Ok(Response::new(PredictResponse {
            prediction: predictions.pop(),
        }))
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let request = request.into_inner();
        let predictions = self.0.predict(&request.requests, request.view).await?;
        Ok(Response::new(PredictBatchResponse { predictions }))
    }
}
