"""The compiled data plane (``services/inference/dataplane``, ADR 0011) against the real broker
and Redis: the binary ``make dataplane`` builds, started and loaded by its Python control plane.

Its answers are checked against ONNX Runtime called in this process on the same rows, its
staleness policies and error codes against the Python service's, its prediction log by reading
the records back from Kafka, and its hot swap under load."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from driftline.dataplane.v1 import control_pb2
from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore, StalenessPolicy
from driftline.inference.v1 import inference_pb2 as ipb
from driftline.inference.v1 import inference_pb2_grpc
from driftline.kit.settings import KafkaSettings, MetricsSettings, RedisSettings
from driftline.kit.testing import (
    Authority,
    CertificatePair,
    certificate_expiry,
    consume,
    free_port,
    redis_server,
    tls_redis_server,
)
from driftline.kit.topics import PREDICTIONS
from driftline.services.inference import metrics as inference_metrics
from driftline.services.inference.config import Settings
from driftline.services.inference.dataplane import DataPlane, Signature, binary_path, model_spec, ort_library
from driftline.services.inference.errors import DigestMismatch, ModelLoadError
from driftline.services.inference.models import ModelMeta

from .conftest import Stack, running_stack
from .planes import (
    FEATURES,
    MAX_ENTITIES,
    MAX_MESSAGE_BYTES,
    Plane,
    meta,
    planes,
    row,
    settings_of,
    version_bytes,
)

pytestmark = pytest.mark.integration


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
            # gRPC's code for a message over the limit, as the Python service gives it (tonic's
            # own OUT_OF_RANGE is rewritten).
            grpc.StatusCode.RESOURCE_EXHAUSTED,
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


async def test_the_data_plane_serves_mutual_tls_only_to_clients_its_ca_signed(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    platform, stranger = Authority(tmp_path, "platform"), Authority(tmp_path, "stranger")
    server, client, impostor = platform.issue("inference"), platform.issue("client"), stranger.issue("client")
    ca = platform.ca_file.read_bytes()

    def credentials(pair: Any) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(ca, pair.key.read_bytes(), pair.cert.read_bytes())

    plane = start_plane(
        server_tls={
            "tls_cert_file": server.cert,
            "tls_key_file": server.key,
            "tls_client_ca_file": platform.ca_file,
        },
        credentials=credentials(client),
    )
    served = x509.load_pem_x509_certificate(server.cert.read_bytes())
    expiry = certificate_expiry("grpc")
    assert expiry == served.not_valid_after_utc.timestamp()  # for the alert
    known = await plane.put(row(1))
    reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
    assert (reply.prediction.entity_id, reply.prediction.model_version) == (known, 3)

    port = plane.process.port
    refused = {
        "plaintext": grpc.aio.insecure_channel(f"127.0.0.1:{port}"),
        "no client certificate": grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca)
        ),
        "another CA's client": grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials(impostor)),
    }
    for why, channel in refused.items():
        async with channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, why
    # The process serves on: the refused handshakes cost it nothing.
    assert (
        await plane.stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
    ).prediction.model_version == 3


async def test_the_data_plane_serves_a_certificate_renewed_in_place_without_a_restart(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    old_ca = Authority(tmp_path, "old", not_after=datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC))
    new_ca = Authority(tmp_path, "new", not_after=datetime.datetime(2032, 1, 1, tzinfo=datetime.UTC))
    served = old_ca.issue("inference")
    plane = start_plane(
        server_tls={"tls_cert_file": served.cert, "tls_key_file": served.key},
        credentials=grpc.ssl_channel_credentials(old_ca.ca_file.read_bytes()),
    )
    known = await plane.put(row(1))
    pid = plane.process.pid
    address = f"127.0.0.1:{plane.process.port}"

    async def predict(ca: Authority) -> int:
        credentials = grpc.ssl_channel_credentials(ca.ca_file.read_bytes())
        async with grpc.aio.secure_channel(address, credentials) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            reply = await stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
        return reply.prediction.model_version

    assert await predict(old_ca) == 3
    await plane.stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)  # a connection
    renewed = new_ca.issue("inference")
    served.cert.write_bytes(renewed.cert.read_bytes())  # half renewed: the key is not there yet
    assert await predict(old_ca) == 3  # the last good pair serves on
    served.key.write_bytes(renewed.key.read_bytes())
    assert await predict(new_ca) == 3  # the next connection gets the renewed certificate
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await predict(old_ca)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The channel opened before the renewal keeps its connection; the process never restarted.
    reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
    assert reply.prediction.entity_id == known
    assert plane.process.pid == pid
    # The control plane's gauge follows the files the data plane now serves with.
    assert certificate_expiry("grpc") == new_ca.not_after.timestamp()
    logged = [
        json.loads(line)["event"]
        for line in (tmp_path / "plane-0" / "dataplane.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert [e for e in logged if e.startswith("tls_certificate_")] == [
        "tls_certificate_not_reloaded",
        "tls_certificate_reloaded",
    ]


async def test_a_client_ca_bundle_renewed_in_place_decides_from_the_next_handshake(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    platform, successor = Authority(tmp_path, "platform"), Authority(tmp_path, "successor")
    served = platform.issue("inference")
    client_ca = tmp_path / "clients-ca.pem"
    client_ca.write_bytes(platform.ca_file.read_bytes())
    plane = start_plane(
        server_tls={
            "tls_cert_file": served.cert,
            "tls_key_file": served.key,
            "tls_client_ca_file": client_ca,
        },
        load=None,
    )
    address = f"127.0.0.1:{plane.process.port}"

    async def health_with(pair: CertificatePair) -> None:
        ca = platform.ca_file.read_bytes()
        credentials = grpc.ssl_channel_credentials(ca, pair.key.read_bytes(), pair.cert.read_bytes())
        async with grpc.aio.secure_channel(address, credentials) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    old_client, new_client = platform.issue("client"), successor.issue("client")
    await health_with(old_client)
    client_ca.write_bytes(successor.ca_file.read_bytes())  # the clients' CA is replaced in place
    await health_with(new_client)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_with(old_client)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_data_plane_serves_its_metrics_under_mutual_tls_only_to_a_scraper_its_ca_signed(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    platform = Authority(tmp_path, "platform")
    served, scraper = platform.issue("inference"), platform.issue("prometheus")
    metrics = MetricsSettings(
        enabled=False, tls_cert_file=served.cert, tls_key_file=served.key, tls_client_ca_file=platform.ca_file
    )
    plane = start_plane(metrics=metrics)
    known = await plane.put(row(1))
    await plane.stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
    url = f"https://127.0.0.1:{plane.process.metrics_port}/metrics"

    def scrape(context: ssl.SSLContext | None) -> str:
        with urllib.request.urlopen(
            url.replace("https", "http") if context is None else url, timeout=5, context=context
        ) as response:
            return response.read().decode()

    known_scraper = ssl.create_default_context(cafile=str(platform.ca_file))
    known_scraper.load_cert_chain(scraper.cert, scraper.key)
    assert "driftline_inference_requests_total" in scrape(known_scraper)
    refused = {
        "plaintext": None,
        "no client certificate": ssl.create_default_context(cafile=str(platform.ca_file)),
    }
    for context in refused.values():
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError, http.client.HTTPException)):
            scrape(context)
    # The refused scrapes cost it nothing: it scrapes and serves on.
    assert "driftline_inference_requests_total" in scrape(known_scraper)
    assert (
        await plane.stub.Predict(ipb.PredictRequest(entity_id=known), timeout=5)
    ).prediction.entity_id == known


@pytest.mark.parametrize("listener", ["mutual_tls", "scram"])
async def test_the_prediction_log_reaches_a_broker_that_demands_tls_or_a_login(
    secure_kafka: Any, redis_settings: RedisSettings, tmp_path: Path, listener: str
) -> None:
    kafka: KafkaSettings = getattr(secure_kafka, listener)
    async with planes(kafka, redis_settings, tmp_path) as start:
        plane = start()
        entities = [await plane.put(row(i)) for i in range(3)]
        reply = await plane.stub.PredictBatch(
            ipb.PredictBatchRequest(requests=[ipb.PredictRequest(entity_id=e) for e in entities])
        )
        assert plane.process.stop() == 0  # flushes the log: every record acknowledged, or the test fails
        records = consume(kafka, plane.predictions.name, expected=3)
    logged = {ipb.PredictionLog.FromString(m.value()).prediction_id for m in records}
    assert logged == {p.prediction_id for p in reply.predictions}
    stopped = next(
        e for e in map(json.loads, plane.process.log_path.read_text().splitlines()) if e["event"] == "stopped"
    )
    assert (stopped["log_flushed"], stopped["log_acknowledged"]) == (True, 3)


async def test_health_says_not_serving_until_a_model_is_loaded(start_plane: Callable[..., Plane]) -> None:
    plane = start_plane(load=None)
    entity = await plane.put(row(2))
    assert await plane.serving() == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert early.value.code() == grpc.StatusCode.UNAVAILABLE
    assert early.value.details() == "no fraud champion is loaded yet"
    # The request's own faults come first, as in the Python service, model or no model.
    for request, code, details in [
        (
            ipb.PredictRequest(entity_id=entity, view=7),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown prediction view 7",
        ),
        (
            ipb.PredictRequest(entity_id=entity, model_name="other"),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'other'; this server serves 'fraud'",
        ),
        (ipb.PredictRequest(entity_id=""), grpc.StatusCode.INVALID_ARGUMENT, "entity_id is empty"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await plane.stub.Predict(request)
        assert (refused.value.code(), refused.value.details()) == (code, details)
    plane.load(3)
    assert await plane.serving() == health_pb2.HealthCheckResponse.SERVING
    assert (await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))).prediction.model_version == 3


async def test_a_swap_under_load_fails_no_call(start_plane: Callable[..., Plane]) -> None:
    plane = start_plane()
    entities = [await plane.put(row(i)) for i in range(4)]
    seen: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def caller(k: int) -> None:
        request = ipb.PredictBatchRequest(requests=[ipb.PredictRequest(entity_id=e) for e in entities])
        while not stop.is_set():
            try:
                reply = await plane.stub.PredictBatch(request, timeout=5)
            except grpc.aio.AioRpcError as err:
                errors.append(err)
                continue
            versions = {p.model_version for p in reply.predictions}
            assert len(versions) == 1  # one call, one model
            seen[k].append(versions.pop())

    async def progress(version: int) -> None:
        """Until every caller has had a few answers from ``version``."""
        deadline = time.monotonic() + 30
        while not all(versions.count(version) >= 3 for versions in seen):
            assert time.monotonic() < deadline, f"callers never got 3 answers each from v{version}"
            await asyncio.sleep(0.02)

    callers = [asyncio.create_task(caller(k)) for k in range(4)]
    await progress(3)
    for version in (4, 5):
        await asyncio.to_thread(plane.load, version)
        await progress(version)
    stop.set()
    await asyncio.gather(*callers)
    assert errors == []
    for versions in seen:
        assert versions == sorted(versions)  # never back to an older model
        assert set(versions) == {3, 4, 5}
    reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entities[1]))
    assert reply.prediction.score == pytest.approx(plane.scores([row(1)], version=5)[0], abs=1e-6)


async def test_a_model_that_fails_to_load_leaves_the_serving_one(start_plane: Callable[..., Plane]) -> None:
    plane = start_plane()
    entity = await plane.put(row(3))
    with pytest.raises(ModelLoadError, match="model"):
        plane.process.load_model(b"not an onnx model", ModelMeta("fraud", 4, "", FEATURES))
    good = version_bytes(5)
    with pytest.raises(DigestMismatch, match="is not the registry's"):
        plane.process.load_model(good, ModelMeta("fraud", 5, "0" * 64, FEATURES))
    reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert reply.prediction.model_version == 3
    assert await plane.serving() == health_pb2.HealthCheckResponse.SERVING
    text = plane.metrics()
    assert 'driftline_dataplane_model_load_failures_total{reason="digest",role="champion"} 1' in text
    sha256 = hashlib.sha256(version_bytes(3)).hexdigest()
    info = f'driftline_inference_model_info{{alias="champion",model="fraud",sha256="{sha256}",version="3"}} 1'
    assert info in text.splitlines()
    assert 'driftline_inference_execution_provider{provider="CPUExecutionProvider"} 1' in text
    assert "driftline_inference_serving 1" in text
    assert 'driftline_inference_requests_total{code="OK",method="Predict"} 1' in text
    assert 'driftline_inference_predictions_total{role="champion"} 1' in text


async def test_the_data_plane_checks_what_it_is_told_to_load(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    """Its own checks, on specs the control plane would never send (``model_spec`` refuses
    these first)."""
    plane = start_plane()
    entity = await plane.put(row(3))
    good = version_bytes(4)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    model = tmp_path / "good.onnx"
    model.write_bytes(good)
    spec = control_pb2.ModelSpec(
        path=str(model),
        sha256=hashlib.sha256(good).hexdigest(),
        name="fraud",
        version=4,
        input="input",
        input_dtype="float32",
        score_output="probabilities",
        feature_names=FEATURES,
        columns=range(len(FEATURES)),
        threshold=0.5,
        intra_threads=1,
    )
    bad = {
        "unloadable": (str(garbage), hashlib.sha256(b"not an onnx model").hexdigest(), {}),
        "column": (str(model), spec.sha256, {"columns": [*range(len(FEATURES) - 1), 99]}),
        "dtype": (str(model), spec.sha256, {"input_dtype": "int64"}),
        "output": (str(model), spec.sha256, {"score_output": "nope"}),
    }
    stub = plane.process.control()
    for what, (path, digest, changes) in bad.items():
        wrong = control_pb2.ModelSpec()
        wrong.CopyFrom(spec)
        wrong.path, wrong.sha256 = path, digest
        for field_name, value in changes.items():
            if isinstance(value, list):
                del getattr(wrong, field_name)[:]
                getattr(wrong, field_name).extend(value)
            else:
                setattr(wrong, field_name, value)
        with pytest.raises(grpc.RpcError) as refused:
            stub.LoadModel(control_pb2.LoadModelRequest(model=wrong), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, what
    assert "column 99 is outside the store's 12 features" in plane.process.log_path.read_text()
    reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert reply.prediction.model_version == 3  # every refusal left version 3 serving
    assert (
        'driftline_dataplane_model_load_failures_total{reason="invalid",role="champion"} 4' in plane.metrics()
    )
    assert stub.LoadModel(control_pb2.LoadModelRequest(model=spec), timeout=30).replaced_version == 3


async def test_runs_through_an_io_binding_score_as_plain_runs_at_every_batch_size(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    """The I/O binding a session on CUDA runs through, asked for on the CPU: the same scores as
    ONNX Runtime in this process, whatever the number of rows (outputs are bound anew each run)."""
    plane = start_plane(load=None)
    artifact = version_bytes(4)
    path = tmp_path / "bound.onnx"
    path.write_bytes(artifact)
    spec = model_spec(
        Settings(), feature_set=TRANSACTION_FEATURES, artifact=artifact, meta=meta(4, artifact), path=path
    )
    assert not spec.io_binding  # the control plane asks for none on the CPU
    spec.io_binding = True
    loaded = plane.process.control().LoadModel(control_pb2.LoadModelRequest(model=spec), timeout=30)
    assert (loaded.provider, loaded.io_binding) == ("CPUExecutionProvider", True)
    rows = [row(i) for i in range(MAX_ENTITIES)]
    entities = [await plane.put(values) for values in rows]
    for size in (1, MAX_ENTITIES, 3, 1):
        batch = await plane.stub.PredictBatch(
            ipb.PredictBatchRequest(requests=[ipb.PredictRequest(entity_id=e) for e in entities[:size]])
        )
        assert [p.model_version for p in batch.predictions] == [4] * size
        assert [p.score for p in batch.predictions] == pytest.approx(plane.scores(rows[:size], 4), abs=1e-6)
    plain = plane.process.load_model(artifact, meta(4, artifact))
    assert (plain.provider, plain.io_binding, plain.replaced_version) == ("CPUExecutionProvider", False, 4)


def test_the_curve_command_loads_as_load_model_does_and_runs_every_batch_size(tmp_path: Path) -> None:
    """``driftline-dataplane curve`` (the bench's data-plane curve, the one a GPU run uses): no
    server, store or log; the spec the control plane writes, here with the I/O binding asked for."""
    artifact = version_bytes(2)
    path = tmp_path / "model.onnx"
    path.write_bytes(artifact)
    spec = model_spec(
        Settings(), feature_set=TRANSACTION_FEATURES, artifact=artifact, meta=meta(2, artifact), path=path
    )
    spec.io_binding = True
    spec_path = tmp_path / "spec.pb"
    spec_path.write_bytes(spec.SerializeToString())
    out = subprocess.run(
        [str(binary_path()), "curve", str(spec_path), str(ort_library()), "8", "0.05"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    head, *points = [json.loads(line) for line in out.stdout.splitlines()]
    assert (head["provider"], head["io_binding"]) == ("CPUExecutionProvider", True)
    rows = head["check"]["rows"]
    assert [len(r) for r in rows] == [len(FEATURES)] * 8
    assert head["check"]["scores"] == pytest.approx(Plane.scores(rows, 2), abs=1e-6)
    assert [p["batch"] for p in points] == [1, 2, 4, 8]
    assert all(0 < p["p50_s"] <= p["p99_s"] and p["rows_per_s"] > 0 for p in points)
    bad = subprocess.run(
        [str(binary_path()), "curve", str(spec_path)], capture_output=True, text=True, timeout=30
    )
    assert (bad.returncode, bad.stderr.split(":")[0]) == (2, "usage")


def test_a_data_plane_whose_control_plane_is_killed_stops(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    """The control plane SIGKILLed: the kernel stops its data plane (no process left holding
    the ports)."""
    script = f"""
import sys
from pathlib import Path
from typing import Any
from driftline.featurestore import TRANSACTION_FEATURES
from driftline.kit.settings import KafkaSettings, MetricsSettings, RedisSettings
from driftline.kit.topics import PREDICTIONS
from driftline.services.inference.config import Settings
from driftline.services.inference.dataplane import DataPlane
settings = Settings(
    kafka=KafkaSettings(bootstrap_servers={kafka_settings.bootstrap_servers!r}),
    redis=RedisSettings(url={redis_settings.url!r}),
    metrics=MetricsSettings(enabled=False),
)
workdir = Path({str(tmp_path)!r})
plane = DataPlane(settings, feature_set=TRANSACTION_FEATURES, predictions=PREDICTIONS, workdir=workdir)
plane.start()
print(plane.pid, flush=True)
sys.stdin.read()
"""
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, "the data plane outlived its control plane"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait(10)
    events = [json.loads(line) for line in (tmp_path / "dataplane.log").read_text().splitlines()]
    assert events[-1]["event"] == "stopped"  # a graceful stop: SIGTERM, not a kill


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


async def test_a_redis_restart_is_ridden_out(start_plane: Callable[..., Plane], tmp_path: Path) -> None:
    port = free_port()
    own = RedisSettings(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=1.0)
    with redis_server(port, tmp_path):
        plane = start_plane(redis=own)
        entity = await plane.put(row(6))
        assert (await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))).prediction.entity_id == entity
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    with redis_server(port, tmp_path):
        # The private server kept nothing; this test's own client needs a new connection too.
        fresh = aioredis.Redis.from_url(own.url)
        await AsyncOnlineStore(fresh, TRANSACTION_FEATURES, key_prefix=f"{plane.prefix}fs").write(
            entity, row(6), time.time()
        )
        await fresh.aclose()
        deadline = time.monotonic() + 15
        codes = []
        while True:
            try:
                reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
                break
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
                if time.monotonic() > deadline:
                    raise AssertionError("the data plane never reconnected") from err
                await asyncio.sleep(0.2)
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}  # while reconnecting: retryable
        assert reply.prediction.score == pytest.approx(plane.scores([row(6)])[0], abs=1e-6)


async def test_the_data_plane_reads_an_online_store_that_serves_mutual_tls(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    with tls_redis_server(tmp_path) as own:
        plane = start_plane(redis=own)  # the Python writer and the data plane both over TLS
        entity = await plane.put(row(2))
        reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
        assert reply.prediction.score == pytest.approx(plane.scores([row(2)])[0], abs=1e-6)


def test_a_data_plane_that_does_not_trust_the_online_store_stops_the_start_with_the_reason(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path, "stranger")
    with tls_redis_server(tmp_path) as trusted:
        distrustful = trusted.copy(update={"tls_ca_file": stranger.ca_file})
        settings = settings_of(kafka_settings, distrustful, "x")
        process = DataPlane(
            settings, feature_set=TRANSACTION_FEATURES, predictions=PREDICTIONS, workdir=tmp_path
        )
        with pytest.raises(RuntimeError, match="online store") as refused:
            process.start()
    assert "UnknownIssuer" in str(refused.value)  # rustls's reason, in the start's error


def test_an_online_store_that_cannot_be_reached_stops_the_start_with_the_reason(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    unreachable = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    settings = settings_of(kafka_settings, unreachable, "x")
    process = DataPlane(settings, feature_set=TRANSACTION_FEATURES, predictions=PREDICTIONS, workdir=tmp_path)
    with pytest.raises(RuntimeError, match="online store"):
        process.start()
    assert not process.control_socket.exists()


async def test_the_service_serves_through_its_data_plane_and_hands_it_every_champion(
    data_plane_stack: Stack,
) -> None:
    stack = data_plane_stack
    plane = stack.app.data_plane
    assert plane is not None
    assert stack.app.port == plane.port  # clients reach the data plane on the service's port
    first, second = await stack.serve_versions(2)
    entities = await stack.put_entities(3)
    request = ipb.PredictBatchRequest(requests=[ipb.PredictRequest(entity_id=e) for e in entities])
    served = await stack.inference.PredictBatch(request)
    assert {p.model_version for p in served.predictions} == {first}
    await stack.promote(second, first)
    await stack.wait_serving_version(second)
    # The data plane swapped before the control plane did: it already serves the new champion.
    after = await stack.inference.PredictBatch(request)
    assert {p.model_version for p in after.predictions} == {second}
    assert [p.score for p in after.predictions] != [p.score for p in served.predictions]
    # The control plane ran no prediction and keeps no session: the signature of each model only.
    champion = stack.app.slots.champion
    assert champion is not None
    assert isinstance(champion.runtime, Signature)
    assert champion.batcher.batches == 0


async def test_a_data_plane_that_dies_is_started_again_with_its_models(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    port = free_port()  # a restart listens where clients already connect
    async with running_stack(
        kafka_settings, redis_settings, tmp_path, data_plane=True, listen=f"127.0.0.1:{port}"
    ) as stack:
        (version,) = await stack.serve_versions(1)
        (entity,) = await stack.put_entities(1)
        request = ipb.PredictRequest(entity_id=entity)
        before = (await stack.inference.Predict(request)).prediction
        restarts = REGISTRY.get_sample_value("driftline_inference_data_plane_restarts_total") or 0.0
        plane = stack.app.data_plane
        assert plane is not None
        os.kill(plane.pid, signal.SIGKILL)
        codes = []
        deadline = time.monotonic() + 30
        while True:
            try:
                after = (await stack.inference.Predict(request, timeout=2)).prediction
                break
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
                assert time.monotonic() < deadline, f"never served again: {codes[-3:]}"
                await asyncio.sleep(0.1)
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}  # down, then up: retryable throughout
        assert (after.model_version, after.score) == (version, before.score)
        assert plane.port == port
        assert REGISTRY.get_sample_value("driftline_inference_data_plane_restarts_total") == restarts + 1


async def test_the_data_plane_reports_the_services_metrics_by_their_names_types_and_labels(
    start_plane: Callable[..., Plane],
) -> None:
    """One set of dashboards and alerts reads whichever path serves: every ``driftline_inference_*``
    family the data plane exports is one the Python service defines, of the same type and labels."""
    plane = start_plane()
    entity = await plane.put(row(1))
    await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
    defined = {m._name: m for m in vars(inference_metrics).values() if isinstance(m, MetricWrapperBase)}
    exported = {
        f.name: f
        for f in text_string_to_metric_families(plane.metrics())
        if f.name.startswith("driftline_inference_")
    }
    for name, family in exported.items():
        assert name in defined, f"{name} is not one of the service's metrics"
        python = defined[name]
        assert family.type == python._type, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(python._labelnames), (name, sample.labels)
    assert {
        "driftline_inference_stage_seconds",
        "driftline_inference_requests",
        "driftline_inference_predictions",
        "driftline_inference_batch_size",
        "driftline_inference_batch_requests",
        "driftline_inference_queue_depth",
        "driftline_inference_rejected",
        "driftline_inference_prediction_log_dropped",
        "driftline_inference_model_info",
        "driftline_inference_model_loaded_timestamp_seconds",
        "driftline_inference_model_swaps",
        "driftline_inference_execution_provider",
        "driftline_inference_serving",
        "driftline_inference_shadow_skipped",
        "driftline_inference_prediction_log_buffered",
    } <= set(exported)
