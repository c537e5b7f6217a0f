//! The benchmark's reference: the same service answering every call with a canned prediction
//! of the real size for the request's view (no Redis, no model, no log), on the same tonic
//! server. With it, `bench/inference.py` tells the data plane's own cost from gRPC's.

use tonic::{Request, Response, Status};

use crate::proto::features::FeatureValue;
use crate::proto::inference::inference_service_server::InferenceService;
use crate::proto::inference::{
    PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse, Prediction,
    PredictionView,
};

pub struct Echo {
    /// Feature names for the FULL view.
    pub features: Vec<String>,
}

impl Echo {
    /// The Python echo's canned prediction (`bench/inference.py`), field for field.
    fn canned(&self, entity_id: &str, view: i32) -> Prediction {
        let full = view == PredictionView::Full as i32;
        let features = if full {
            self.features
                .iter()
                .map(|name| FeatureValue {
                    name: name.clone(),
                    value: 1.0,
                    status: 1,
                    age_seconds: 1.5,
                    event_time: Some(prost_types::Timestamp {
                        seconds: 1_800_000_000,
                        nanos: 0,
                    }),
                })
                .collect()
        } else {
            Vec::new()
        };
        Prediction {
            prediction_id: "5f0c2a1e-8a3b-4c55-9a0d-2f7f3c1e9b11".into(),
            entity_id: entity_id.into(),
            score: 0.123_456,
            label: 0,
            model_name: "fraud".into(),
            model_version: 1,
            max_feature_age_seconds: 1.5,
            features,
            served_by: "champion".into(),
        }
    }
}

#[tonic::async_trait]
impl InferenceService for Echo {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(PredictResponse {
            prediction: Some(self.canned(&request.entity_id, request.view)),
        }))
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let request = request.into_inner();
        let predictions = request
            .requests
            .iter()
            .map(|r| self.canned(&r.entity_id, request.view))
            .collect();
        Ok(Response::new(PredictBatchResponse { predictions }))
    }
}
