//! `driftline.dataplane.v1.DataPlaneControl`, on the control socket: the Python control plane
//! hands over a verified artifact and its spec; the model is loaded and warmed off the serving
//! threads, then swapped in. A model that fails leaves the serving one in place.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::jsonlog;
use crate::model::{Model, ModelError};
use crate::proto::control::data_plane_control_server::DataPlaneControl;
use crate::proto::control::{LoadModelRequest, LoadModelResponse, ModelSpec};
use crate::proto::inference::inference_service_server::SERVICE_NAME;
use crate::service::Predictor;

pub struct Control {
    pub predictor: Arc<Predictor>,
    pub health: Mutex<HealthReporter>,
    /// One load at a time: swaps happen in the order the control plane asked for them.
    pub loading: Mutex<()>,
}

impl Control {
    /// Load, swap, metrics and health as one step: run in a task of its own, so a caller that
    /// gives up (its deadline, a dropped connection) cannot leave a model swapped in with
    /// health not updated.
    async fn load(self: Arc<Self>, spec: ModelSpec) -> Result<LoadModelResponse, Status> {
        let _one_at_a_time = self.loading.lock().await;
        let width = self.predictor.store.layout.width();
        let (name, version) = (spec.name.clone(), spec.version);
        let loaded = tokio::task::spawn_blocking(move || Model::load(&spec, width))
            .await
            .map_err(|err| Status::internal(format!("the load task failed: {err}")))?;
        let metrics = &self.predictor.metrics;
        let model = match loaded {
            Ok(model) => Arc::new(model),
            Err(err) => {
                let (reason, status) = match &err {
                    ModelError::Digest(why) => ("digest", Status::data_loss(why.clone())),
                    ModelError::Invalid(why) => {
                        ("invalid", Status::failed_precondition(why.clone()))
                    }
                };
                metrics
                    .model_load_failures
                    .with_label_values(&[reason])
                    .inc();
                let serving = self.predictor.model.current().map(|m| m.spec.version);
                jsonlog::emit(
                    "warning",
                    "model_load_failed",
                    json!({"model": name, "version": version, "error": err.to_string(), "serving_version": serving}),
                );
                return Err(status);
            }
        };
        let load_seconds = model.load_seconds;
        let replaced = self.predictor.model.swap(model);
        let replaced_version = replaced.as_ref().map_or(0, |m| m.spec.version);
        metrics.model_info.reset();
        metrics
            .model_info
            .with_label_values(&[name.as_str(), &version.to_string()])
            .set(1);
        metrics.model_swaps.inc();
        let mut health = self.health.lock().await;
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        jsonlog::emit(
            "info",
            "model_swapped",
            json!({"model": name, "version": version, "replaced_version": replaced_version, "load_seconds": load_seconds}),
        );
        Ok(LoadModelResponse {
            load_seconds,
            replaced_version,
        })
    }
}

/// The control service: `Control` shared with the tasks that outlive a call.
pub struct ControlService(pub Arc<Control>);

#[tonic::async_trait]
impl DataPlaneControl for ControlService {
    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let spec = request
            .into_inner()
            .model
            .ok_or_else(|| Status::invalid_argument("no model to load"))?;
        let done = tokio::spawn(self.0.clone().load(spec))
            .await
            .map_err(|err| Status::internal(format!("the load task failed: {err}")))?;
        done.map(Response::new)
    }
}
