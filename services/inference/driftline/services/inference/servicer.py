"""gRPC adapter for ``driftline.inference.v1.InferenceService``: wire types in, core call, wire out."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.inference.v1 import inference_pb2, inference_pb2_grpc
from driftline.kit.errors import DriftlineError, InvalidArgument, grpc_errors
from driftline.services.inference import metrics
from driftline.services.inference.predictor import PredictInput, PredictionResult, Predictor

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def observed(method: str) -> Callable[[F], F]:
    """Count each call by gRPC status and time it (stage ``total``). Goes under ``@grpc_errors``."""
    total = metrics.STAGE_SECONDS.labels("total")
    by_code: dict[str, Any] = {}

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await handler(self, request, context)
            except DriftlineError as err:
                code = err.status.name
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                raise
            finally:
                total.observe(time.perf_counter() - started)
                counter = by_code.get(code)
                if counter is None:
                    counter = by_code[code] = metrics.REQUESTS.labels(method, code)
                counter.inc()

        return wrapper  # type: ignore[return-value]

    return decorate


def deadline_of(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """The call's deadline in ``loop.time()`` seconds: the client's, else the server default."""
    remaining = context.time_remaining()
    if remaining is None or not math.isfinite(remaining) or remaining > default_s * 1000:
        remaining = default_s
    return asyncio.get_running_loop().time() + remaining


_VIEWS = frozenset(inference_pb2.PredictionView.values())


def with_features(view: int) -> bool:
    """Whether predictions in ``view`` carry their features: FULL only (BASIC is the default).

    A view this server does not know (a newer client's) is INVALID_ARGUMENT, not BASIC in silence.
    """
    if view not in _VIEWS:
        raise InvalidArgument(f"unknown prediction view {view}")
    return view == inference_pb2.PREDICTION_VIEW_FULL


def fill(prediction: inference_pb2.Prediction, result: PredictionResult, *, features: bool) -> None:
    """Write ``result`` into an empty ``prediction`` that already sits in its response: building
    the message in place spares a copy of it (and of its features) into the response.

    ``features``: whether to write the features used (the FULL view). They are most of a
    prediction's bytes and of the time spent here: 12 features with event times are 7x the
    bytes of the rest, and 64 predictions with them take 1.2 ms to fill against 0.2 without.
    """
    prediction.prediction_id = result.prediction_id
    prediction.entity_id = result.entity_id
    prediction.score = result.score
    prediction.label = result.label
    prediction.model_name = result.model_name
    prediction.model_version = result.model_version
    prediction.max_feature_age_seconds = result.max_feature_age_seconds
    prediction.served_by = result.served_by  # a StrEnum: the member is its text (no .value lookup)
    if not features:
        return
    # Filling the repeated field in place is 3x faster than building messages and copying them.
    # An entity's features share one event time (the store keeps one per entity), so its
    # Timestamp is built once and copied into each: a third less time than a dict per feature.
    add = prediction.features.add
    stamped: float | None = None
    stamp: Timestamp | None = None  # set by the first feature with an event time
    for name, value, event_time, age, status in result.features:
        # FeatureStatus uses the proto enum's numbers.
        if event_time is None:
            add(name=name, value=value, status=status, age_seconds=age or 0.0)
            continue
        if event_time != stamped:
            seconds = int(event_time // 1)
            stamp = Timestamp(seconds=seconds, nanos=int((event_time - seconds) * 1e9))
            stamped = event_time
        add(name=name, value=value, status=status, age_seconds=age or 0.0, event_time=stamp)


def _input(request: inference_pb2.PredictRequest) -> PredictInput:
    return PredictInput(request.entity_id, request.event_id, request.model_name)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Predict and PredictBatch by entity id; the request's view says whether the predictions
    carry the features they were scored on (FULL) or not (BASIC, the default)."""

    def __init__(self, predictor: Predictor, *, default_deadline_s: float) -> None:
        self._predictor = predictor
        self._default_deadline_s = default_deadline_s

    @grpc_errors
    @observed("Predict")
    async def Predict(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.PredictResponse:
        features = with_features(request.view)
        deadline = deadline_of(context, self._default_deadline_s)
        results = await self._predictor.predict([_input(request)], deadline=deadline)
        response = inference_pb2.PredictResponse()
        fill(response.prediction, results[0], features=features)
        return response

    @grpc_errors
    @observed("PredictBatch")
    async def PredictBatch(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.PredictBatchRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.PredictBatchResponse:
        features = with_features(request.view)
        deadline = deadline_of(context, self._default_deadline_s)
        results = await self._predictor.predict([_input(r) for r in request.requests], deadline=deadline)
        response = inference_pb2.PredictBatchResponse()
        add = response.predictions.add
        for result in results:
            fill(add(), result, features=features)
        return response
