//! The KServe Open Inference Protocol v2 (`inference.GRPCInferenceService`) on raw tensors:
//! health, metadata and ModelInfer through the same batcher as Predict. Checks, codes and
//! messages are the Python service's (`kserve.py`, `validation.py`): tensors are decoded whole
//! first (datatype, shape, byte or value count), then checked against the model's input (names,
//! dtype, rank, fixed dimensions, rows, NaN and Inf). The answer uses the request's encoding.
//! Raw tensors carry no entity, so ModelInfer is not written to the prediction log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::batch::{Data, Tensor};
use crate::model::{Model, TensorMeta};
use crate::proto::kserve::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::kserve::model_infer_request::InferInputTensor;
use crate::proto::kserve::model_infer_response::InferOutputTensor;
use crate::proto::kserve::model_metadata_response::TensorMetadata;
use crate::proto::kserve::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};
use crate::service::{batch_status, within, Predictor};

pub const SERVER_NAME: &str = "driftline-inference";
pub const SERVER_VERSION: &str = "0.1.0";
pub const PLATFORM: &str = "onnxruntime_onnx";

/// A KServe datatype's numpy name and element size, as the Python service decodes it.
fn datatype(name: &str) -> Option<(&'static str, usize)> {
    Some(match name {
        "FP32" => ("float32", 4),
        "FP64" => ("float64", 8),
        "FP16" => ("float16", 2),
        "INT64" => ("int64", 8),
        "INT32" => ("int32", 4),
        "INT16" => ("int16", 2),
        "INT8" => ("int8", 1),
        "UINT64" => ("uint64", 8),
        "UINT32" => ("uint32", 4),
        "UINT16" => ("uint16", 2),
        "UINT8" => ("uint8", 1),
        "BOOL" => ("bool", 1),
        _ => return None,
    })
}

/// Values a typed `contents` holds for `datatype` (FP16 travels only as raw bytes).
fn contents_len(contents: &InferTensorContents, datatype: &str) -> Option<usize> {
    Some(match datatype {
        "FP32" => contents.fp32_contents.len(),
        "FP64" => contents.fp64_contents.len(),
        "INT64" => contents.int64_contents.len(),
        "INT32" | "INT16" | "INT8" => contents.int_contents.len(),
        "UINT64" => contents.uint64_contents.len(),
        "UINT32" | "UINT16" | "UINT8" => contents.uint_contents.len(),
        "BOOL" => contents.bool_contents.len(),
        _ => return None,
    })
}

/// A list of names as Python prints one: `['a', 'b']`.
fn py_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

/// A version as the protocol sends it: empty for the serving one.
fn version_of(text: &str) -> Result<Option<i32>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| invalid(format!("model_version '{text}' is not a number")))
}

/// One decoded input: its values as doubles when it is a float tensor (the only kind a model of
/// the data plane takes; others are refused by their dtype once all are decoded).
struct Input<'a> {
    name: &'a str,
    numpy: &'static str,
    shape: Vec<usize>,
    values: Option<Vec<f64>>,
}

fn decode<'a>(tensor: &'a InferInputTensor, raw: Option<&[u8]>) -> Result<Input<'a>, Status> {
    let name = tensor.name.as_str();
    let (numpy, size) = datatype(&tensor.datatype).ok_or_else(|| {
        invalid(format!(
            "input {name}: unsupported datatype '{}'",
            tensor.datatype
        ))
    })?;
    if tensor.shape.iter().any(|&d| d < 0) {
        return Err(invalid(format!(
            "input {name}: negative dimension in shape {:?}",
            tensor.shape
        )));
    }
    let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            invalid(format!(
                "input {name}: shape {:?} is too large",
                tensor.shape
            ))
        })?;
    let values = if let Some(raw) = raw {
        if Some(raw.len()) != count.checked_mul(size) {
            return Err(invalid(format!(
                "input {name}: {} bytes do not hold shape {:?} of {} ({} bytes)",
                raw.len(),
                tensor.shape,
                tensor.datatype,
                count.saturating_mul(size)
            )));
        }
        match tensor.datatype.as_str() {
            "FP32" => Some(
                raw.chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
            ),
            "FP64" => Some(
                raw.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            ),
            _ => None,
        }
    } else {
        let contents = tensor.contents.clone().unwrap_or_default();
        let given = contents_len(&contents, &tensor.datatype).ok_or_else(|| {
            invalid(format!(
                "input {name}: datatype '{}' needs raw_input_contents",
                tensor.datatype
            ))
        })?;
        if given != count {
            return Err(invalid(format!(
                "input {name}: {given} values do not fill shape {:?}",
                tensor.shape
            )));
        }
        match tensor.datatype.as_str() {
            "FP32" => Some(
                contents
                    .fp32_contents
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect(),
            ),
            "FP64" => Some(contents.fp64_contents),
            _ => None,
        }
    };
    Ok(Input {
        name,
        numpy,
        shape,
        values,
    })
}

/// The request's one matrix for `model`, and its rows.
fn feeds(request: &ModelInferRequest, model: &Model) -> Result<(Vec<f64>, usize), Status> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(invalid(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs: Vec<Input> = Vec::with_capacity(request.inputs.len());
    for (i, tensor) in request.inputs.iter().enumerate() {
        if inputs.iter().any(|seen| seen.name == tensor.name) {
            return Err(invalid(format!("input {} given twice", tensor.name)));
        }
        inputs.push(decode(tensor, raw.get(i).map(|b| b.as_ref()))?);
    }
    let spec: &TensorMeta = &model.input;
    let mut unknown: Vec<&str> = inputs
        .iter()
        .map(|i| i.name)
        .filter(|&n| n != spec.name)
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(invalid(format!(
            "unknown input(s) {}; the model takes {}",
            py_list(&unknown),
            py_list(&[spec.name.as_str()])
        )));
    }
    let Some(input) = inputs.into_iter().next() else {
        return Err(invalid(format!("missing input {}", spec.name)));
    };
    let expects = model.dtype.numpy();
    if input.numpy != expects {
        return Err(invalid(format!(
            "input {} is {}, the model expects {expects}",
            input.name, input.numpy
        )));
    }
    if input.shape.len() != spec.shape.len() {
        return Err(invalid(format!(
            "input {} has shape {:?}, the model expects {:?}",
            input.name, input.shape, spec.shape
        )));
    }
    for (axis, (&got, &want)) in input.shape.iter().zip(&spec.shape).enumerate() {
        if want >= 0 && got as i64 != want {
            return Err(invalid(format!(
                "input {} has {got} on axis {axis}, the model expects {want} (shape {:?} vs {:?})",
                input.name, input.shape, spec.shape
            )));
        }
    }
    let rows = input.shape.first().copied().unwrap_or(0);
    if rows == 0 {
        return Err(invalid(format!("input {} holds no rows", input.name)));
    }
    let values = input.values.expect("float inputs are decoded");
    if let Some(flat) = values.iter().position(|v| !model.representable(*v)) {
        let mut index = Vec::with_capacity(input.shape.len());
        let mut rest = flat;
        for &d in input.shape.iter().rev() {
            index.push(rest % d);
            rest /= d;
        }
        index.reverse();
        return Err(invalid(format!(
            "input {} holds NaN or Inf (first at index {index:?})",
            input.name
        )));
    }
    Ok((values, rows))
}

/// The outputs asked for (all when none are), encoded as the request was.
fn encode(
    model: &Model,
    outputs: Vec<Tensor>,
    requested: &[&str],
    raw: bool,
) -> Result<ModelInferResponse, Status> {
    let names: Vec<&str> = if requested.is_empty() {
        model.outputs.iter().map(|o| o.name.as_str()).collect()
    } else {
        requested.to_vec()
    };
    let unknown: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !model.outputs.iter().any(|o| o.name == *n))
        .collect();
    if !unknown.is_empty() {
        let mut have: Vec<&str> = model.outputs.iter().map(|o| o.name.as_str()).collect();
        have.sort_unstable();
        return Err(invalid(format!(
            "unknown output(s) {}; the model has {}",
            py_list(&unknown),
            py_list(&have)
        )));
    }
    let mut response = ModelInferResponse {
        model_name: model.spec.name.clone(),
        model_version: model.spec.version.to_string(),
        ..ModelInferResponse::default()
    };
    for name in names {
        let index = model
            .outputs
            .iter()
            .position(|o| o.name == name)
            .expect("known output");
        let tensor = &outputs[index];
        let mut out = InferOutputTensor {
            name: name.to_string(),
            datatype: model.outputs[index].datatype.to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            ..InferOutputTensor::default()
        };
        if raw {
            response
                .raw_output_contents
                .push(little_endian(&tensor.data));
        } else {
            let mut contents = InferTensorContents::default();
            match &tensor.data {
                Data::F32(v) => contents.fp32_contents.clone_from(v),
                Data::F64(v) => contents.fp64_contents.clone_from(v),
                Data::I64(v) => contents.int64_contents.clone_from(v),
                Data::I32(v) => contents.int_contents.clone_from(v),
                Data::Bool(v) => contents.bool_contents.clone_from(v),
            }
            out.contents = Some(contents);
        }
        response.outputs.push(out);
    }
    Ok(response)
}

fn little_endian(data: &Data) -> Vec<u8> {
    match data {
        Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::Bool(v) => v.iter().map(|&x| u8::from(x)).collect(),
    }
}

fn metadata(meta: &TensorMeta) -> TensorMetadata {
    TensorMetadata {
        name: meta.name.clone(),
        datatype: meta.datatype.to_string(),
        shape: meta.shape.clone(),
    }
}

impl Predictor {
    async fn model_infer(&self, request: &ModelInferRequest) -> Result<ModelInferResponse, Status> {
        self.check_name(&request.model_name)?;
        let model = self.by_version(version_of(&request.model_version)?)?;
        let (matrix, rows) = feeds(request, &model)?;
        let outputs = model
            .infer(matrix, rows)
            .await
            .map_err(|err| batch_status(&model, err))?;
        let requested: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut response = encode(
            &model,
            outputs,
            &requested,
            !request.raw_input_contents.is_empty(),
        )?;
        response.id.clone_from(&request.id);
        Ok(response)
    }
}

/// The v2 protocol over the same predictor as `Service`.
pub struct KServe(pub Arc<Predictor>);

#[tonic::async_trait]
impl GrpcInferenceService for KServe {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.0.champion.current().is_some();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        self.0.check_name(&request.name)?;
        let version = version_of(&request.version)?;
        let ready = self.0.champion.current().is_some()
            && version.is_none_or(|v| self.0.live_versions().contains(&v));
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: SERVER_VERSION.into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        self.0.check_name(&request.name)?;
        let model = self.0.by_version(version_of(&request.version)?)?;
        Ok(Response::new(ModelMetadataResponse {
            name: model.spec.name.clone(),
            versions: self
                .0
                .live_versions()
                .iter()
                .map(ToString::to_string)
                .collect(),
            platform: PLATFORM.into(),
            inputs: vec![metadata(&model.input)],
            outputs: model.outputs.iter().map(metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let call = self.0.observe("ModelInfer");
        let deadline = self.0.default_deadline;
        let (metadata, _, request) = request.into_parts();
        let result = within(deadline, &metadata, self.0.model_infer(&request)).await;
        call.finish(&result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(datatype: &str, shape: Vec<i64>) -> InferInputTensor {
        InferInputTensor {
            name: "input".into(),
            datatype: datatype.into(),
            shape,
            ..InferInputTensor::default()
        }
    }

    #[test]
    fn raw_float_tensors_decode_little_endian() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = tensor("FP32", vec![1, 2]);
        let input = decode(&t, Some(&bytes)).unwrap();
        assert_eq!(input.values, Some(vec![1.5, -2.0]));
        assert_eq!(input.shape, vec![1, 2]);
    }

    #[test]
    fn malformed_tensors_are_refused_with_the_python_services_words() {
        let t = tensor("FP32", vec![2, 2]);
        let short = decode(&t, Some(&[0u8; 12])).err().unwrap();
        assert_eq!(
            short.message(),
            "input input: 12 bytes do not hold shape [2, 2] of FP32 (16 bytes)"
        );
        let odd = tensor("STRING", vec![1]);
        assert_eq!(
            decode(&odd, None).err().unwrap().message(),
            "input input: unsupported datatype 'STRING'"
        );
        let negative = tensor("FP32", vec![-1, 2]);
        assert_eq!(
            decode(&negative, None).err().unwrap().message(),
            "input input: negative dimension in shape [-1, 2]"
        );
        let half = tensor("FP16", vec![1]);
        assert_eq!(
            decode(&half, None).err().unwrap().message(),
            "input input: datatype 'FP16' needs raw_input_contents"
        );
        let mut typed = tensor("FP64", vec![3]);
        typed.contents = Some(InferTensorContents {
            fp64_contents: vec![1.0],
            ..InferTensorContents::default()
        });
        assert_eq!(
            decode(&typed, None).err().unwrap().message(),
            "input input: 1 values do not fill shape [3]"
        );
        // Integers decode (their dtype is refused later, against the model's).
        let ints = tensor("INT64", vec![1]);
        let decoded = decode(&ints, Some(&[0u8; 8])).unwrap();
        assert_eq!((decoded.numpy, decoded.values), ("int64", None));
    }

    #[test]
    fn outputs_encode_as_little_endian_bytes() {
        assert_eq!(
            little_endian(&Data::I64(vec![1])),
            vec![1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(little_endian(&Data::Bool(vec![true, false])), vec![1, 0]);
        assert_eq!(
            little_endian(&Data::F32(vec![1.0])),
            1.0f32.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn names_print_as_python_lists() {
        assert_eq!(py_list(&["a", "b"]), "['a', 'b']");
        assert_eq!(version_of("").unwrap(), None);
        assert_eq!(version_of("7").unwrap(), Some(7));
        assert_eq!(
            version_of("x").unwrap_err().message(),
            "model_version 'x' is not a number"
        );
    }
}
