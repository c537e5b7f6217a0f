"""The inference service against the real broker, Redis and registry service."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from driftline.features.v1 import features_pb2
from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import decode
from driftline.kit.testing import consume
from driftline.kserve.v2 import grpc_predict_v2_pb2 as v2
from driftline.services.inference.testing import scalar_model

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def expected_score(version: int, first_feature: float) -> float:
    """Score of conftest's model_bytes(version) for a row whose first feature is given."""
    return 1 / (1 + math.exp(-(0.01 * version * first_feature - 1.0 + 0.5 * version)))


async def wait_health(stack, status: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await stack.health() != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        await asyncio.sleep(0.05)


async def rpc_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


def load_failures(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftline_inference_model_load_failures_total", {"alias": "champion", "reason": reason}
    )
    return value or 0.0


async def test_health_waits_for_a_warm_champion_then_predictions_flow(stack):
    entities = await stack.put_entities(64)
    assert await stack.health() == NOT_SERVING
    # Which path serves, for DriftlineTargetDown: the data plane's target is down by design at 0.
    serving_path = REGISTRY.get_sample_value("driftline_inference_data_plane")
    assert serving_path == (1.0 if stack.app.data_plane is not None else 0.0)
    code = await rpc_code(stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entities[0])))
    assert code is grpc.StatusCode.UNAVAILABLE

    (v1,) = await stack.serve_versions(1)
    await wait_health(stack, SERVING)

    response = await stack.inference.Predict(
        inference_pb2.PredictRequest(
            entity_id=entities[3], event_id="evt-3", view=inference_pb2.PREDICTION_VIEW_FULL
        )
    )
    p = response.prediction
    assert p.entity_id == entities[3]
    assert p.model_name == stack.model_name
    assert p.model_version == v1
    assert p.served_by == "champion"
    assert p.score == pytest.approx(expected_score(1, 3.0), rel=1e-5)
    assert p.label == int(p.score >= 0.5)
    assert uuid.UUID(p.prediction_id)
    assert [f.name for f in p.features] == list(stack.features)
    assert {f.status for f in p.features} == {features_pb2.FEATURE_STATUS_OK}
    assert 0 <= p.max_feature_age_seconds < 60
    # The default view (BASIC) is the same prediction without its features.
    basic = (await stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entities[3]))).prediction
    assert (basic.score, basic.model_version, basic.served_by) == (p.score, v1, "champion")
    assert 0 <= basic.max_feature_age_seconds < 60
    assert len(basic.features) == 0

    batch = await stack.inference.PredictBatch(
        inference_pb2.PredictBatchRequest(
            requests=[inference_pb2.PredictRequest(entity_id=e) for e in entities]
        )
    )
    assert [q.entity_id for q in batch.predictions] == entities
    for i, q in enumerate(batch.predictions):
        assert q.score == pytest.approx(expected_score(1, float(i % 50)), rel=1e-5)
        assert len(q.features) == 0
    assert len({q.prediction_id for q in batch.predictions}) == 64
    full = await stack.inference.PredictBatch(
        inference_pb2.PredictBatchRequest(
            requests=[inference_pb2.PredictRequest(entity_id=e) for e in entities[:3]],
            view=inference_pb2.PREDICTION_VIEW_FULL,
        )
    )
    assert [[f.name for f in q.features] for q in full.predictions] == [list(stack.features)] * 3


async def test_prediction_logs_arrive_on_the_predictions_topic(stack):
    await stack.serve_versions(1)
    entities = await stack.put_entities(10)
    ids = {}
    for i, entity in enumerate(entities):
        r = await stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entity, event_id=f"evt-{i}"))
        ids[r.prediction.prediction_id] = r.prediction
    messages = await asyncio.to_thread(
        consume, stack.kafka, stack.predictions.name, expected=10, timeout_s=30
    )
    logs = [decode(inference_pb2.PredictionLog, m.value()) for m in messages]
    assert {log.prediction_id for log in logs} == set(ids)
    for message, log in zip(messages, logs, strict=True):
        served = ids[log.prediction_id]
        assert message.key().decode() == log.entity_id == served.entity_id
        assert log.score == pytest.approx(served.score)
        assert log.model_version == served.model_version
        assert log.role == "champion"
        assert log.event_id.startswith("evt-")
        assert list(log.feature_names) == list(stack.features)
        assert len(log.feature_values) == len(stack.features)
        assert log.predicted_at.seconds > 0


async def test_champion_swap_under_load_fails_no_request(stack):
    v1, v2_ = await stack.serve_versions(2)
    broken = await stack.register(scalar_model(len(stack.features)))
    entities = await stack.put_entities(32)
    stop = asyncio.Event()
    errors: list[grpc.StatusCode] = []

    async def client() -> list[int]:
        seen = []
        while not stop.is_set():
            try:
                r = await stack.inference.Predict(
                    inference_pb2.PredictRequest(entity_id=random.choice(entities)), timeout=10
                )
                seen.append(r.prediction.model_version)
            except grpc.aio.AioRpcError as err:
                errors.append(err.code())
        return seen

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await asyncio.sleep(0.5)

    # A version that cannot be warmed is refused: v1 keeps serving and the alert metric moves.
    before = load_failures("not_batchable")
    await stack.promote(broken, v1)
    deadline = time.monotonic() + 30
    while load_failures("not_batchable") == before:
        assert time.monotonic() < deadline, "the broken version was never tried"
        await asyncio.sleep(0.05)
    assert stack.app.slots.champion.version == v1

    await stack.promote(v2_, broken)
    await stack.wait_serving_version(v2_)
    await asyncio.sleep(0.5)
    stop.set()
    seen = await asyncio.gather(*clients)

    assert errors == []
    flat = [v for s in seen for v in s]
    assert set(flat) == {v1, v2_}
    assert len(flat) > 50
    for versions in seen:
        # Each client's calls are sequential: once one was served by v2, none later is by v1.
        assert versions == sorted(versions)


async def test_bad_inputs_get_their_status_codes_and_the_server_stays_up(stack):
    await stack.serve_versions(1)
    (entity,) = await stack.put_entities(1)
    width = len(stack.features)

    def infer(array: np.ndarray, datatype: str = "FP32", model: str = "fraud") -> v2.ModelInferRequest:
        return v2.ModelInferRequest(
            model_name=model,
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name="input", datatype=datatype, shape=list(array.shape)
                )
            ],
            raw_input_contents=[array.tobytes()],
        )

    good = np.ones((2, width), np.float32)
    nan = good.copy()
    nan[1, 3] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    cases = {
        "wrong shape": (infer(np.ones((2, width + 1), np.float32)), grpc.StatusCode.INVALID_ARGUMENT),
        "wrong rank": (infer(np.ones((width,), np.float32)), grpc.StatusCode.INVALID_ARGUMENT),
        "wrong dtype": (infer(np.ones((2, width), np.float64), "FP64"), grpc.StatusCode.INVALID_ARGUMENT),
        "nan": (infer(nan), grpc.StatusCode.INVALID_ARGUMENT),
        "inf": (infer(inf), grpc.StatusCode.INVALID_ARGUMENT),
        "short bytes": (
            v2.ModelInferRequest(
                model_name="fraud",
                inputs=[
                    v2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, width])
                ],
                raw_input_contents=[good.tobytes()[:-4]],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "oversized": (
            infer(np.ones((stack.max_message_bytes // (4 * width) + 10, width), np.float32)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        "unknown model": (infer(good, model="credit"), grpc.StatusCode.NOT_FOUND),
    }
    for name, (request, expected) in cases.items():
        assert await rpc_code(stack.kserve.ModelInfer(request)) is expected, name

    predict = stack.inference.Predict
    assert await rpc_code(predict(inference_pb2.PredictRequest(entity_id=f"{stack.prefix}nobody"))) is (
        grpc.StatusCode.NOT_FOUND
    )
    assert await rpc_code(predict(inference_pb2.PredictRequest(entity_id=entity, model_name="credit"))) is (
        grpc.StatusCode.NOT_FOUND
    )
    assert (
        await rpc_code(predict(inference_pb2.PredictRequest(entity_id="")))
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    # A view this server does not know (a newer client's enum value) is refused, not guessed.
    assert (
        await rpc_code(predict(inference_pb2.PredictRequest(entity_id=entity, view=7)))  # type: ignore[arg-type]
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await rpc_code(
            stack.inference.PredictBatch(
                inference_pb2.PredictBatchRequest(
                    requests=[inference_pb2.PredictRequest(entity_id=entity)],
                    view=7,  # type: ignore[arg-type]
                )
            )
        )
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await rpc_code(stack.kserve.ModelMetadata(v2.ModelMetadataRequest(name="credit"))) is (
        grpc.StatusCode.NOT_FOUND
    )

    # Still up and serving after every refusal.
    ok = await stack.kserve.ModelInfer(infer(good))
    assert len(ok.outputs) == 2
    assert (await predict(inference_pb2.PredictRequest(entity_id=entity))).prediction.entity_id == entity
    assert await stack.health() == SERVING


async def test_kserve_v2_model_infer_round_trip(stack):
    (v1,) = await stack.serve_versions(1)
    k = stack.kserve
    assert (await k.ServerLive(v2.ServerLiveRequest())).live
    assert (await k.ServerReady(v2.ServerReadyRequest())).ready
    assert (await k.ModelReady(v2.ModelReadyRequest(name="fraud"))).ready
    assert not (await k.ModelReady(v2.ModelReadyRequest(name="fraud", version="99"))).ready
    assert (await k.ServerMetadata(v2.ServerMetadataRequest())).name == "driftline-inference"
    meta = await k.ModelMetadata(v2.ModelMetadataRequest(name="fraud"))
    assert list(meta.versions) == [str(v1)]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, len(stack.features)])
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("label", "INT64"), ("probabilities", "FP32")]

    x = np.random.default_rng(7).normal(0, 30, size=(5, len(stack.features))).astype(np.float32)
    session = ort.InferenceSession(stack.model_bytes(1), providers=["CPUExecutionProvider"])
    want_label, want_proba = session.run(None, {"input": x})

    raw = await k.ModelInfer(
        v2.ModelInferRequest(
            model_name="fraud",
            id="req-1",
            inputs=[
                v2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[5, x.shape[1]])
            ],
            raw_input_contents=[x.tobytes()],
        )
    )
    assert raw.id == "req-1"
    assert raw.model_version == str(v1)
    outputs = {o.name: o for o in raw.outputs}
    assert list(outputs["probabilities"].shape) == [5, 2]
    assert list(outputs["label"].shape) == [5]
    got = dict(zip([o.name for o in raw.outputs], raw.raw_output_contents, strict=True))
    np.testing.assert_allclose(
        np.frombuffer(got["probabilities"], "<f4").reshape(5, 2), want_proba, rtol=1e-6
    )
    np.testing.assert_array_equal(np.frombuffer(got["label"], "<i8"), want_label)

    typed = await k.ModelInfer(
        v2.ModelInferRequest(
            model_name="fraud",
            model_version=str(v1),
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=[5, x.shape[1]],
                    contents=v2.InferTensorContents(fp32_contents=x.ravel().tolist()),
                )
            ],
            outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        )
    )
    assert [o.name for o in typed.outputs] == ["probabilities"]
    assert not typed.raw_output_contents
    np.testing.assert_allclose(
        np.array(typed.outputs[0].contents.fp32_contents).reshape(5, 2), want_proba, rtol=1e-6
    )


class GatedFeatures:
    """Holds every feature read until released, so calls are provably in flight."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = 0

    async def read_frame(self, entity_ids, **kwargs):
        self.waiting += 1
        await self.gate.wait()
        return await self.inner.read_frame(entity_ids, **kwargs)


async def test_stop_drains_in_flight_requests(python_stack):
    stack = python_stack
    await stack.serve_versions(1)
    entities = await stack.put_entities(20)
    gated = GatedFeatures(stack.store)
    stack.app.predictor._features = gated

    async def predict(entity: str) -> inference_pb2.PredictResponse:
        return await stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entity), timeout=20)

    calls = [asyncio.create_task(predict(e)) for e in entities]
    deadline = time.monotonic() + 10
    while gated.waiting < len(entities):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(stack.app.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "stop did not wait for in-flight calls"
    gated.gate.set()
    results = await asyncio.gather(*calls)
    await stopping
    assert [r.prediction.entity_id for r in results] == entities


async def test_client_and_default_deadlines_end_the_call_and_its_work(python_stack):
    stack = python_stack
    await stack.serve_versions(1)
    (entity,) = await stack.put_entities(1)
    gated = GatedFeatures(stack.store)
    stack.app.predictor._features = gated
    batcher = stack.app.slots.champion.batcher
    runs_before = batcher.batches
    logged_before = stack.app.prediction_log.buffered + stack.app.prediction_log.acknowledged

    started = time.monotonic()
    code = await rpc_code(
        stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entity), timeout=0.3)
    )
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < stack.default_deadline_s

    started = time.monotonic()
    code = await rpc_code(stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entity)))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started >= stack.default_deadline_s * 0.9

    # Both calls were abandoned while reading features: releasing the reads scores nothing.
    gated.gate.set()
    await asyncio.sleep(0.3)
    assert batcher.batches == runs_before
    assert stack.app.prediction_log.buffered + stack.app.prediction_log.acknowledged == logged_before
    ok = await stack.inference.Predict(inference_pb2.PredictRequest(entity_id=entity), timeout=5)
    assert ok.prediction.entity_id == entity


async def test_an_online_store_that_cannot_be_reached_answers_unavailable(
    python_stack, monkeypatch, tmp_path
):
    stack = python_stack
    from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore, OnlineStore
    from driftline.kit.redis_clients import async_redis_client
    from driftline.kit.settings import RedisSettings
    from driftline.kit.testing import free_port, redis_server

    await stack.serve_versions(1)
    port = free_port()
    # A store built as the service builds it, on a Redis that is not there yet; the service's
    # own wiring decides what an unreachable store means.
    client = async_redis_client(RedisSettings(url=f"redis://127.0.0.1:{port}/0", retries=1))
    store = AsyncOnlineStore(client, TRANSACTION_FEATURES, key_prefix="fs")
    monkeypatch.setattr(stack.app.predictor, "_features", store)
    predict = stack.inference.Predict
    request = inference_pb2.PredictRequest(entity_id="card-1")
    assert await rpc_code(predict(request)) is grpc.StatusCode.UNAVAILABLE
    assert await stack.health() == SERVING  # a store outage is not the server's: it stays up

    with redis_server(port, tmp_path) as sync_client:
        values = [1.0] * len(TRANSACTION_FEATURES.feature_names)
        writer = OnlineStore(sync_client, TRANSACTION_FEATURES, key_prefix="fs")
        writer.write_many([("card-1", values, time.time())])
        assert (await predict(request)).prediction.entity_id == "card-1"
    await client.aclose()


async def test_server_reflection_lists_both_apis_and_health(stack):
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    listed = set()
    async for reply in stub.ServerReflectionInfo(requests()):
        listed |= {s.name for s in reply.list_services_response.service}
    assert {
        "driftline.inference.v1.InferenceService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= listed
    assert "driftline.dataplane.v1.DataPlaneControl" not in listed  # the control socket's only
