"""The compiled data plane (``services/inference/dataplane``, a spike of ADR 0011) against the real
broker and Redis: the binary ``make setup`` builds, started from a spec the control plane writes.

Its answers are checked against ONNX Runtime called in this process on the same rows, its
staleness policies and error codes against the Python service's, and its prediction log by
reading the records back from Kafka."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pytest
import redis.asyncio as aioredis

from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore, StalenessPolicy
from driftline.inference.v1 import inference_pb2 as ipb
from driftline.inference.v1 import inference_pb2_grpc
from driftline.kit.settings import KafkaSettings, MetricsSettings, RedisSettings
from driftline.kit.testing import consume, create_test_topics, delete_topics, free_port, unique_prefix
from driftline.kit.topics import PREDICTIONS, Topic
from driftline.services.inference.config import InferenceGrpcSettings, Settings
from driftline.services.inference.dataplane import DataPlane, build_spec
from driftline.services.inference.models import ModelMeta
from driftline.services.inference.testing import logistic_model

pytestmark = pytest.mark.integration

FEATURES = tuple(TRANSACTION_FEATURES.feature_names)
WEIGHTS = [0.02, 0.01, -0.03, 0.005, 0.2, 0.1, 0.001, -0.002, 0.3, 0.8, 0.4, 0.6]
MAX_ENTITIES = 8
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass
class Plane:
    prefix: str
    store: AsyncOnlineStore
    stub: inference_pb2_grpc.InferenceServiceStub
    process: DataPlane
    predictions: Topic
    kafka: KafkaSettings
    model_path: Path
    entities: list[str] = field(default_factory=list)

    async def put(self, values: list[float], *, age_s: float = 1.0) -> str:
        entity = f"{self.prefix}card-{len(self.entities)}"
        await self.store.write(entity, values, time.time() - age_s)
        self.entities.append(entity)
        return entity

    def scores(self, rows: list[list[float]]) -> list[float]:
        """ONNX Runtime in this process, on the same rows."""
        session = onnxruntime.InferenceSession(str(self.model_path), providers=["CPUExecutionProvider"])
        matrix = np.asarray(rows, dtype=np.float32)
        return session.run(["probabilities"], {"input": matrix})[0][:, 1].astype(float).tolist()


@pytest.fixture
async def start_plane(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> AsyncIterator[Callable[..., Plane]]:
    """``start_plane(policy=...)``: a data plane on a namespaced topic and key prefix, stopped and
    cleaned up after the test."""
    prefix = unique_prefix()
    predictions = PREDICTIONS.namespaced(prefix)
    create_test_topics(kafka_settings, [predictions])
    redis_client = aioredis.Redis.from_url(redis_settings.url)
    store = AsyncOnlineStore(redis_client, TRANSACTION_FEATURES, key_prefix=f"{prefix}fs")
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(logistic_model(WEIGHTS, bias=-1.0))
    started: list[tuple[Plane, grpc.aio.Channel]] = []

    def start(policy: StalenessPolicy = StalenessPolicy.SERVE, threshold: float = 0.5) -> Plane:
        settings = Settings(
            grpc=InferenceGrpcSettings(port=0, max_message_bytes=MAX_MESSAGE_BYTES),
            kafka=kafka_settings,
            redis=redis_settings,
            metrics=MetricsSettings(enabled=False),
            staleness_policy=policy,
            decision_threshold=threshold,
            max_entities_per_call=MAX_ENTITIES,
            online_store_key_prefix=f"{prefix}fs",
        )
        workdir = tmp_path / f"plane-{len(started)}"
        spec = build_spec(
            settings,
            feature_set=TRANSACTION_FEATURES,
            model_path=model_path,
            meta=ModelMeta(name="fraud", version=3, feature_names=FEATURES),
            predictions=predictions,
            port_file=workdir / "port",
        )
        process = DataPlane(spec, workdir)
        port = process.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        plane = Plane(prefix, store, stub, process, predictions, kafka_settings, model_path)
        started.append((plane, channel))
        return plane

    try:
        yield start
    finally:
        for plane, channel in started:
            await channel.close()
            plane.process.stop()
            if plane.entities:
                await store.delete(plane.entities)
        await redis_client.aclose()
        delete_topics(kafka_settings, [predictions])


def row(i: int) -> list[float]:
    return [float(i), 1.0 + i, 2.0, 3.0 * i, 1.0, 2.0, 0.5, 30.0, float(i % 3), float(i % 2), 0.25, 1.0]


async def test_scores_match_onnxruntime_and_every_prediction_is_logged(
    start_plane: Callable[..., Plane],
) -> None:
    plane = start_plane()
    rows = [row(i) for i in range(6)]
    entities = [await plane.put(values, age_s=2.0) for values in rows]
    batch = await plane.stub.PredictBatch(
        ipb.PredictBatchRequest(
            requests=[ipb.PredictRequest(entity_id=e, event_id=f"ev-{e}") for e in entities]
        )
    )
    single = await plane.stub.Predict(ipb.PredictRequest(entity_id=entities[0]))
    served = [*batch.predictions, single.prediction]
    expected = plane.scores([*rows, rows[0]])
    assert [p.entity_id for p in served] == [*entities, entities[0]]
    assert [p.score for p in served] == pytest.approx(expected, abs=1e-6)
    assert [p.label for p in served] == [int(s >= 0.5) for s in expected]
    assert {(p.model_name, p.model_version, p.served_by) for p in served} == {("fraud", 3, "champion")}
    assert all(2.0 <= p.max_feature_age_seconds < 10.0 for p in served)
    assert all(not p.features for p in served)  # BASIC view
    ids = [p.prediction_id for p in served]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 for i in ids)

    assert plane.process.stop() == 0  # SIGTERM: drains and flushes the log
    records = consume(plane.kafka, plane.predictions.name, expected=len(served))
    logged = {}
    for message in records:
        record = ipb.PredictionLog.FromString(message.value())
        assert message.key() == record.entity_id.encode()
        logged[record.prediction_id] = record
    assert set(logged) == set(ids)
    for prediction, values in zip(served, [*rows, rows[0]], strict=True):
        record = logged[prediction.prediction_id]
        assert (record.score, record.label) == (prediction.score, prediction.label)
        assert (record.model_name, record.model_version, record.role) == ("fraud", 3, "champion")
        assert tuple(record.feature_names) == FEATURES
        assert list(record.feature_values) == values
        assert abs(record.predicted_at.ToDatetime().timestamp() - time.time()) < 60
    assert logged[batch.predictions[1].prediction_id].event_id == f"ev-{entities[1]}"
    lines = plane.process.log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["log_flushed"]
    assert stopped["log_acknowledged"] == len(served)


async def test_full_view_carries_each_feature_with_its_status(start_plane: Callable[..., Plane]) -> None:
    plane = start_plane()
    # 300 s old: past the 120 s ttl of the short-window counts, within the others' 600 s.
    entity = await plane.put(row(4), age_s=300.0)
    reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entity, view=ipb.PREDICTION_VIEW_FULL))
    features = reply.prediction.features
    assert [f.name for f in features] == list(FEATURES)
    assert [f.value for f in features] == row(4)
    ttls = {f.name: f.ttl_s for f in TRANSACTION_FEATURES.features}
    assert [f.status for f in features] == [2 if ttls[f.name] < 300 else 1 for f in features]
    stamps = {f.event_time.ToDatetime().timestamp() for f in features}
    assert len(stamps) == 1
    assert abs(stamps.pop() - (time.time() - 300.0)) < 5.0
    assert all(f.age_seconds == pytest.approx(300.0, abs=5.0) for f in features)


async def test_staleness_policies_match_the_python_service(start_plane: Callable[..., Plane]) -> None:
    serve = start_plane(StalenessPolicy.SERVE)
    default = start_plane(StalenessPolicy.DEFAULT)
    fail = start_plane(StalenessPolicy.FAIL)
    values = row(5)
    entity = await serve.put(values, age_s=300.0)
    defaults = TRANSACTION_FEATURES.defaults
    replaced = [
        d if f.ttl_s < 300 else v
        for f, v, d in zip(TRANSACTION_FEATURES.features, values, defaults, strict=True)
    ]
    assert replaced != values

    served = await serve.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert served.prediction.score == pytest.approx(serve.scores([values])[0], abs=1e-6)
    defaulted = await default.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert defaulted.prediction.score == pytest.approx(serve.scores([replaced])[0], abs=1e-6)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await fail.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    expected = f"feature txn_count_10s of {entity} is STALE and the staleness policy is fail"
    assert failed.value.details() == expected
    fresh = await fail.put(values, age_s=1.0)
    assert (await fail.stub.Predict(ipb.PredictRequest(entity_id=fresh))).prediction.entity_id == fresh


@pytest.mark.parametrize(
    ("make_request", "code", "details"),
    [
        (lambda known: ipb.PredictBatchRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no entities to score"),
        (
            lambda known: ipb.PredictBatchRequest(
                requests=[ipb.PredictRequest(entity_id=known)] * (MAX_ENTITIES + 1)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{MAX_ENTITIES + 1} entities in one call; at most {MAX_ENTITIES}",
        ),
        (
            lambda known: ipb.PredictBatchRequest(
                requests=[ipb.PredictRequest(entity_id=known), ipb.PredictRequest(entity_id="")]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entity_id is empty",
        ),
        (
            lambda known: ipb.PredictBatchRequest(
                requests=[ipb.PredictRequest(entity_id=known), ipb.PredictRequest(entity_id="nobody")]
            ),
            grpc.StatusCode.NOT_FOUND,
            "no features for entity nobody",
        ),
        (
            lambda known: ipb.PredictBatchRequest(
                requests=[ipb.PredictRequest(entity_id=known, model_name="other")]
            ),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'other'; this server serves 'fraud'",
        ),
        (
            lambda known: ipb.PredictBatchRequest(
                requests=[ipb.PredictRequest(entity_id=known, event_id="x" * MAX_MESSAGE_BYTES)]
            ),
            # tonic's code for a message over the limit (grpc-core's, in the Python service, is
            # RESOURCE_EXHAUSTED): a known difference, docs/inference.md.
            grpc.StatusCode.OUT_OF_RANGE,
            f"Error, decoded message length too large: found {MAX_MESSAGE_BYTES + 28} bytes, "
            f"the limit is: {MAX_MESSAGE_BYTES} bytes",
        ),
    ],
    ids=["empty", "too-many", "empty-entity", "unknown-entity", "unknown-model", "oversized"],
)
async def test_bad_requests_get_the_python_services_codes(
    start_plane: Callable[..., Plane],
    make_request: Callable[[str], ipb.PredictBatchRequest],
    code: grpc.StatusCode,
    details: str,
) -> None:
    plane = start_plane()
    known = await plane.put(row(1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plane.stub.PredictBatch(make_request(known))
    assert refused.value.code() == code
    assert refused.value.details() == details
    # The process stays up and serves the next call.
    assert (await plane.stub.Predict(ipb.PredictRequest(entity_id=known))).prediction.entity_id == known


def test_a_model_that_does_not_load_stops_the_start_with_the_reason(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(logistic_model(WEIGHTS))
    settings = Settings(kafka=kafka_settings, redis=redis_settings, metrics=MetricsSettings(enabled=False))
    spec = build_spec(
        settings,
        feature_set=TRANSACTION_FEATURES,
        model_path=model_path,
        meta=ModelMeta(name="fraud", version=1, feature_names=FEATURES),
        predictions=PREDICTIONS,
        port_file=tmp_path / "port",
    )
    model_path.write_bytes(b"not an onnx model")  # corrupted after the control plane checked it
    with pytest.raises(RuntimeError, match="model load failed"):
        DataPlane(spec, tmp_path / "corrupt").start()
    model_path.write_bytes(logistic_model(WEIGHTS))
    spec["store"]["url"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(RuntimeError, match="online store"):
        DataPlane(spec, tmp_path / "no-redis").start()
