"""gRPC adapter for the KServe Open Inference Protocol v2 (``inference.GRPCInferenceService``).

ModelInfer takes raw tensors, either in ``raw_input_contents`` (little-endian bytes, what Triton
clients send) or in typed ``contents``; the answer uses the same encoding as the request. Requests
go through the same batcher as Predict. They are not written to the prediction log: raw tensors
carry no entity, and load-testing tools would otherwise flood drift detection with synthetic rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from driftline.kit.errors import InvalidArgument, grpc_errors
from driftline.kserve.v2 import grpc_predict_v2_pb2 as pb
from driftline.kserve.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from driftline.services.inference.models import ModelSlots, ServingModel
from driftline.services.inference.servicer import deadline_of, observed
from driftline.services.inference.tensors import NUMPY_TO_KSERVE, TensorSpec
from driftline.services.inference.validation import decode_tensor, validate_feeds

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "driftline-inference"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"

#: The typed ``contents`` field that carries each datatype (FP16 travels only as raw bytes).
_CONTENTS_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "INT16": "int_contents",
    "INT8": "int_contents",
    "UINT64": "uint64_contents",
    "UINT32": "uint_contents",
    "UINT16": "uint_contents",
    "UINT8": "uint_contents",
    "BOOL": "bool_contents",
}


def _version(text: str) -> int | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"model_version {text!r} is not a number") from None


def _metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.wire_shape
    )


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's tensors as numpy arrays; INVALID_ARGUMENT when they are malformed."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in feeds:
            raise InvalidArgument(f"input {tensor.name} given twice")
        if raw:
            feeds[tensor.name] = decode_tensor(
                tensor.name, tensor.datatype, list(tensor.shape), raw=raw[i], values=()
            )
            continue
        field = _CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise InvalidArgument(
                f"input {tensor.name}: datatype {tensor.datatype!r} needs raw_input_contents"
            )
        values = getattr(tensor.contents, field)
        feeds[tensor.name] = decode_tensor(
            tensor.name, tensor.datatype, list(tensor.shape), raw=None, values=values
        )
    return feeds


def encode_outputs(
    model: ServingModel, outputs: Sequence[np.ndarray], requested: Sequence[str], *, raw: bool
) -> pb.ModelInferResponse:
    specs = {spec.name: (i, spec) for i, spec in enumerate(model.runtime.outputs)}
    names = list(requested) or [spec.name for spec in model.runtime.outputs]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {unknown}; the model has {sorted(specs)}")
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version))
    for name in names:
        index, _spec = specs[name]
        array = np.ascontiguousarray(outputs[index])
        datatype = NUMPY_TO_KSERVE[array.dtype]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            response.raw_output_contents.append(
                array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            )
        else:
            getattr(tensor.contents, _CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return response


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Health, metadata and raw-tensor inference over the live models."""

    def __init__(self, slots: ModelSlots, *, default_deadline_s: float) -> None:
        self._slots = slots
        self._default_deadline_s = default_deadline_s

    @grpc_errors
    async def ServerLive(  # noqa: N802
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._slots.ready)

    @grpc_errors
    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        self._slots.check_name(request.name)
        version = _version(request.version)
        live = {m.version for m in self._slots.models().values()}
        ready = self._slots.ready and (version is None or version in live)
        return pb.ModelReadyResponse(ready=ready)

    @grpc_errors
    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @grpc_errors
    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        self._slots.check_name(request.name)
        model = self._slots.by_version(_version(request.version))
        versions = sorted({m.version for m in self._slots.models().values()})
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in versions],
            platform=PLATFORM,
            inputs=[_metadata(s) for s in model.runtime.inputs],
            outputs=[_metadata(s) for s in model.runtime.outputs],
        )

    @grpc_errors
    @observed("ModelInfer")
    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self._slots.check_name(request.model_name)
        model = self._slots.by_version(_version(request.model_version))
        deadline = deadline_of(context, self._default_deadline_s)
        with model.lease():
            feeds = decode_inputs(request)
            validate_feeds(model.runtime.inputs, feeds)
            outputs = await model.infer(feeds, deadline=deadline)
        response = encode_outputs(
            model, outputs, [o.name for o in request.outputs], raw=bool(request.raw_input_contents)
        )
        response.id = request.id
        return response
