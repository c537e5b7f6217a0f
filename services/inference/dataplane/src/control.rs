//! `driftline.dataplane.v1.DataPlaneControl`, on the control socket: the Python control plane
//! hands over a verified artifact and its spec for a role; the model is loaded and warmed off the
//! serving threads, then swapped in. A model that fails leaves the one in its role in place. The
//! challenger can be taken out again; the champion only ever replaced.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::jsonlog;
use crate::model::{Model, ModelError, Role};
use crate::proto::control::data_plane_control_server::DataPlaneControl;
use crate::proto::control::{
    LoadModelRequest, LoadModelResponse, ModelSpec, RemoveModelRequest, RemoveModelResponse,
    Role as WireRole,
};
use crate::service::SERVICES;
use crate::service::{ModelSlot, Predictor};

pub struct Control {
    pub predictor: Arc<Predictor>,
    pub health: Mutex<HealthReporter>,
    /// One change at a time: swaps happen in the order the control plane asked for them.
    pub loading: Mutex<()>,
}

/// The role a request names; UNSPECIFIED is the champion.
fn role_of(role: i32) -> Result<Role, Status> {
    match WireRole::try_from(role) {
        Ok(WireRole::Unspecified | WireRole::Champion) => Ok(Role::Champion),
        Ok(WireRole::Challenger) => Ok(Role::Challenger),
        Err(_) => Err(Status::invalid_argument(format!("unknown role {role}"))),
    }
}

impl Control {
    fn slot(&self, role: Role) -> &ModelSlot {
        match role {
            Role::Challenger => &self.predictor.challenger,
            _ => &self.predictor.champion,
        }
    }

    /// Keeps `driftline_inference_model_info` to the models live, as the Python service does.
    fn relabel(&self, role: Role, old: Option<&Model>, new: Option<&Model>) {
        let metrics = &self.predictor.metrics;
        let labels = |m: &Model| {
            [
                m.spec.name.clone(),
                role.name().to_string(),
                m.spec.version.to_string(),
                m.spec.sha256.clone(),
            ]
        };
        if let Some(old) = old {
            let old = labels(old);
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            let _ = metrics.model_info.remove_label_values(&old);
        }
        if let Some(new) = new {
            let live = labels(new);
            let live: Vec<&str> = live.iter().map(String::as_str).collect();
            metrics.model_info.with_label_values(&live).set(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics
                .model_loaded
                .with_label_values(&[role.name()])
                .set(now);
            metrics
                .execution_provider
                .with_label_values(&[new.provider])
                .set(1);
        }
    }

    /// Load, swap, metrics and health as one step: run in a task of its own, so a caller that
    /// gives up (its deadline, a dropped connection) cannot leave a model swapped in with
    /// health not updated.
    async fn load(
        self: Arc<Self>,
        spec: ModelSpec,
        role: Role,
    ) -> Result<LoadModelResponse, Status> {
        let _one_at_a_time = self.loading.lock().await;
        let width = self.predictor.store.layout.width();
        let batching = self.predictor.batching;
        let metrics = self.predictor.metrics.batch(role.name());
        let (name, version) = (spec.name.clone(), spec.version);
        let loaded =
            tokio::task::spawn_blocking(move || Model::load(&spec, width, batching, metrics))
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
                    .with_label_values(&[role.name(), reason])
                    .inc();
                let serving = self.slot(role).current().map(|m| m.spec.version);
                jsonlog::emit(
                    "warning",
                    "model_load_failed",
                    json!({"model": name, "version": version, "role": role.name(), "error": err.to_string(), "serving_version": serving}),
                );
                return Err(status);
            }
        };
        let (load_seconds, provider, io_binding) =
            (model.load_seconds, model.provider, model.io_binding);
        let replaced = self.slot(role).swap(Some(model.clone()));
        self.relabel(role, replaced.as_deref(), Some(&model));
        let replaced_version = replaced.as_ref().map_or(0, |m| m.spec.version);
        metrics.model_swaps.with_label_values(&[role.name()]).inc();
        if role == Role::Champion {
            metrics.serving.set(1);
            let mut health = self.health.lock().await;
            for service in SERVICES {
                health
                    .set_service_status(service, ServingStatus::Serving)
                    .await;
            }
        }
        jsonlog::emit(
            "info",
            "model_swapped",
            json!({"model": name, "version": version, "role": role.name(), "replaced_version": replaced_version, "load_seconds": load_seconds, "provider": provider, "io_binding": io_binding}),
        );
        Ok(LoadModelResponse {
            load_seconds,
            replaced_version,
            provider: provider.into(),
            io_binding,
        })
    }

    async fn remove(&self, role: Role) -> Result<RemoveModelResponse, Status> {
        if role == Role::Champion {
            return Err(Status::failed_precondition(
                "the champion is never removed: it serves until another version replaces it",
            ));
        }
        let _one_at_a_time = self.loading.lock().await;
        let removed = self.slot(role).swap(None);
        self.relabel(role, removed.as_deref(), None);
        let removed_version = removed.as_ref().map_or(0, |m| m.spec.version);
        jsonlog::emit(
            "info",
            "model_removed",
            json!({"role": role.name(), "version": removed_version}),
        );
        Ok(RemoveModelResponse { removed_version })
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
        let request = request.into_inner();
        let role = role_of(request.role)?;
        let spec = request
            .model
            .ok_or_else(|| Status::invalid_argument("no model to load"))?;
        let done = tokio::spawn(self.0.clone().load(spec, role))
            .await
            .map_err(|err| Status::internal(format!("the load task failed: {err}")))?;
        done.map(Response::new)
    }

    async fn remove_model(
        &self,
        request: Request<RemoveModelRequest>,
    ) -> Result<Response<RemoveModelResponse>, Status> {
        let role = role_of(request.into_inner().role)?;
        self.0.remove(role).await.map(Response::new)
    }
}
