"""Inference benchmark: Predict (batch 1) and PredictBatch (64) against baselines in the same run.

    .venv/bin/python bench/inference.py                      # service + curve, ~1-2 minutes
    .venv/bin/python bench/inference.py --only service --view full   # predictions with features
    .venv/bin/python bench/inference.py --only curve --device cuda --plot /tmp/curve.png
    .venv/bin/python bench/inference.py --only dataplane     # ADR 0011's compiled data plane, ~1 minute
    .venv/bin/python bench/inference.py --only dataplane-curve --device cuda   # its runs over batch sizes
    .venv/bin/python bench/inference.py --only tls --rounds 3   # the cost of TLS and mutual TLS

Service part (needs the local stack: Redis and Kafka). Two servers run, one after the other, each
in its own process, driven by the same grpc.aio client in this process:

* an echo server of ``driftline.inference.v1.InferenceService`` that answers every call with a
  canned response of the real size for the request's view (no Redis, no model): the raw cost of
  the gRPC call;
* the inference server (``InferenceApp``: real Redis online store, real Kafka prediction log,
  the model behind the dynamic batcher), with a static model source in place of the registry.

It reports p50, p99 and max requests/s for each, the ratios to the echo server and to
onnxruntime called in-process on the same model, and checks the targets:
p50 <= echo p50 + one Redis read (p50, measured here) + 100 µs; throughput >= 0.7x echo.
For the inference server it also splits the latency phase by the service's own stage histograms
(read from its /metrics): online-store read, queue, model, the rest of the handler, and what lies
outside the handler (gRPC, network, client). Each server's CPU per call is split into its event
loop's thread and the rest, and the service's work is also run in this process without gRPC
(the predictor on the same store and model, the response filled, the log records encoded): what
the loop's thread spends beyond that is gRPC's and asyncio's per-call cost.

Data-plane part (``--only dataplane``, ADR 0011): the same client drives, one after the
other, the Python echo above, the same echo on tonic (``driftline-dataplane echo``), the Python
inference service and the compiled data plane (``services/inference/dataplane``), on the same
entities; #6's targets are judged for both services against both echoes.

TLS part (``--only tls``): the compiled data plane serving plaintext, TLS and mutual TLS, and
reading its online store over mutual TLS (certificates made for the run; a redis-server of the
bench's own serves the same keys in plaintext and over TLS), started again for each mode on the
same entities and model,
the modes alternating over ``--rounds``; each mode's median p50, p99 and throughput against
plaintext's in the same run.

Curve part: the device, the execution provider, and the latency/throughput of raw session runs
over batch sizes 1..4096 (CUDA with I/O binding when the device is CUDA), plotted to a PNG.

Data-plane curve (``--only dataplane-curve``): the same model loaded by the compiled data plane
as its control plane loads it (device, I/O binding, warm-up), each size run through its batcher
as one call (``driftline-dataplane curve``: no server, store or log, so it needs no stack and
runs on a GPU machine as is), beside the same sizes run in this process; ratios and a plot.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from driftline.services.inference.runtime import Device, OnnxModel, RuntimeOptions, SessionFactory
from driftline.services.inference.testing import logistic_model, mlp_model

console = Console(width=180)
N_ENTITIES = 1000
BATCH = 64
#: Width of the default feature set (card_transactions.v1); the curve needs no feature store.
N_FEATURES = 12


def features() -> tuple[str, ...]:
    from driftline.featurestore import TRANSACTION_FEATURES

    names = tuple(TRANSACTION_FEATURES.feature_names)
    assert len(names) == N_FEATURES
    return names


def bench_model() -> bytes:
    rng = np.random.default_rng(3)
    return logistic_model(rng.normal(0, 0.1, N_FEATURES).tolist(), bias=-1.0)


# --- servers (run in child processes) -----------------------------------------------------------


async def _serve_echo(port_file: Path, *, kit: bool = False) -> None:
    import grpc

    from driftline.inference.v1 import inference_pb2, inference_pb2_grpc
    from driftline.kit.grpc import channel_options

    def canned(entity: str, view: int) -> inference_pb2.Prediction:
        # Same fields and sizes as a real prediction in the view asked: in the FULL view, 12
        # features with event times.
        full = view == inference_pb2.PREDICTION_VIEW_FULL
        values = [
            {
                "name": n,
                "value": 1.0,
                "status": 1,
                "age_seconds": 1.5,
                "event_time": {"seconds": 1_800_000_000},
            }
            for n in (features() if full else ())
        ]
        return inference_pb2.Prediction(
            prediction_id="5f0c2a1e-8a3b-4c55-9a0d-2f7f3c1e9b11",
            entity_id=entity,
            score=0.123456,
            label=0,
            model_name="fraud",
            model_version=1,
            max_feature_age_seconds=1.5,
            features=values,
            served_by="champion",
        )

    class Echo(inference_pb2_grpc.InferenceServiceServicer):
        async def Predict(self, request, context):  # noqa: N802
            return inference_pb2.PredictResponse(prediction=canned(request.entity_id, request.view))

        async def PredictBatch(self, request, context):  # noqa: N802
            return inference_pb2.PredictBatchResponse(
                predictions=[canned(r.entity_id, request.view) for r in request.requests]
            )

    if kit:
        # The same echo behind the platform's server: default deadlines, health,
        # reflection, concurrency limit. It tells the platform's cost from the service's own.
        from driftline.kit.grpc import GrpcServer
        from driftline.services.inference.config import InferenceGrpcSettings

        kit_server = GrpcServer(
            InferenceGrpcSettings(port=0), service_names=["driftline.inference.v1.InferenceService"]
        )
        kit_server.add(inference_pb2_grpc.add_InferenceServiceServicer_to_server, Echo())
        port = await kit_server.start()
        await kit_server.set_serving(True)
        port_file.write_text(str(port))
        await kit_server.server.wait_for_termination()
        return
    server = grpc.aio.server(options=channel_options(4 * 1024 * 1024))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def _serve_inference(port_file: Path, prefix: str, device: str) -> None:
    import redis.asyncio as aioredis

    from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore
    from driftline.kit.metrics import serve_metrics
    from driftline.kit.settings import MetricsSettings, RedisSettings
    from driftline.kit.topics import MODEL_EVENTS, PREDICTIONS
    from driftline.services.inference.app import InferenceApp, prediction_log_producer
    from driftline.services.inference.config import InferenceGrpcSettings, Settings
    from driftline.services.inference.loader import ModelRef

    data = bench_model()
    names = features()

    class StaticSource:
        """The registry's part, played by one fixed version."""

        def _ref(self) -> ModelRef:
            return ModelRef("fraud", 1, hashlib.sha256(data).hexdigest(), names)

        def resolve(self, name: str, alias: str) -> ModelRef:
            return self._ref()

        def describe(self, name: str, version: int) -> ModelRef:
            return self._ref()

        def artifact(self, name: str, version: int) -> bytes:
            return data

    redis_settings = RedisSettings()
    store = AsyncOnlineStore(
        aioredis.Redis.from_url(redis_settings.url), TRANSACTION_FEATURES, key_prefix=f"{prefix}fs"
    )
    settings = Settings(
        grpc=InferenceGrpcSettings(port=0),
        metrics=MetricsSettings(enabled=False),
        device=Device(device),
        model_events_group_prefix=f"{prefix}inference",
    )
    app = InferenceApp(
        settings,
        features=store,
        source=StaticSource(),
        producer=prediction_log_producer(settings),
        default_feature_names=names,
        predictions_topic=PREDICTIONS.namespaced(prefix),
        model_events_topic=MODEL_EVENTS.namespaced(prefix),
    )
    port = await app.start()
    await app.wait_ready(60)
    # The driver reads the service's own stage histograms from it, before and after each phase.
    metrics_port = serve_metrics(0, MetricsSettings(), service="inference-bench")
    port_file.write_text(f"{port} {app.sessions.provider} {metrics_port}")
    await asyncio.Event().wait()


# --- client side --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    p50_us: float
    p99_us: float
    rps: float
    rows: int = 1
    #: CPU time the server process spent per call (user + system, all its threads).
    server_cpu_us: float = 0.0
    #: The part of it on the event loop's thread, which every call's Python work shares.
    loop_cpu_us: float = 0.0
    #: The service's own stage histograms over the latency phase: mean µs per call, by stage.
    stages_us: dict[str, float] | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Stages = Callable[[], dict[str, float]]


def _stage_reader(metrics_port: int) -> Stages:
    """Seconds spent so far in each stage of the service, read from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def read() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            sample.labels["stage"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "driftline_inference_stage_seconds"
            for sample in family.samples
            if sample.name.endswith("_sum")
        }

    return read


def _stage_means(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, float]:
    """Mean µs per call of each stage between two readings."""
    return {stage: (total - before.get(stage, 0.0)) * 1e6 / max(1, calls) for stage, total in after.items()}


def _cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """User + system CPU seconds of a process so far: all its threads, or its main thread alone
    (where the servers run their event loop)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    name: str,
    call: Callable[[int], Awaitable[object]],
    *,
    rows: int,
    seconds: float,
    concurrency: int,
    pid: int,
    stages: Stages | None = None,
) -> Result:
    # Latency: one call at a time. Throughput: `concurrency` calls in flight.
    for i in range(200):
        await call(i)
    cpu_before, loop_before = _cpu_seconds(pid), _cpu_seconds(pid, main_thread=True)
    stages_before = await asyncio.to_thread(stages) if stages else None
    samples: list[float] = []
    deadline = time.perf_counter() + seconds / 2
    i = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1e6)
        i += 1
    stage_us = None
    if stages and stages_before is not None:
        stage_us = _stage_means(stages_before, await asyncio.to_thread(stages), len(samples))
    done = 0
    stop_at = time.perf_counter() + seconds / 2

    async def worker(w: int) -> None:
        nonlocal done
        j = w
        while time.perf_counter() < stop_at:
            await call(j)
            done += 1
            j += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    rps = done / (time.perf_counter() - started)
    calls = len(samples) + done
    cpu_us = (_cpu_seconds(pid) - cpu_before) * 1e6 / calls
    loop_us = (_cpu_seconds(pid, main_thread=True) - loop_before) * 1e6 / calls
    return Result(name, _pct(samples, 0.5), _pct(samples, 0.99), rps, rows, cpu_us, loop_us, stage_us)


def _spawn(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(f"/tmp/driftline-bench-{os.getpid()}-{args[0]}.port")
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", *args, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{args[0]} server did not start")
        time.sleep(0.1)
    time.sleep(0.2)
    text = port_file.read_text()
    port_file.unlink(missing_ok=True)
    return proc, text


async def _drive(
    port: int,
    pid: int,
    entities: list[str],
    label: str,
    seconds: float,
    concurrency: int,
    view: int,
    stages: Stages | None = None,
    credentials: Any = None,
) -> list[Result]:
    import grpc

    from driftline.inference.v1 import inference_pb2, inference_pb2_grpc

    address = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    )
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    singles = [inference_pb2.PredictRequest(entity_id=e, view=view) for e in entities]
    batches = [
        inference_pb2.PredictBatchRequest(
            requests=[singles[(k * BATCH + j) % len(singles)] for j in range(BATCH)],
            view=view,
        )
        for k in range(len(singles) // BATCH)
    ]

    async def one(i: int) -> object:
        return await stub.Predict(singles[i % len(singles)], timeout=10)

    async def many(i: int) -> object:
        return await stub.PredictBatch(batches[i % len(batches)], timeout=10)

    results = [
        await _measure(
            f"{label} Predict", one, rows=1, seconds=seconds, concurrency=concurrency, pid=pid, stages=stages
        ),
        await _measure(
            f"{label} PredictBatch({BATCH})",
            many,
            rows=BATCH,
            seconds=seconds,
            concurrency=max(2, concurrency // 4),
            pid=pid,
            stages=stages,
        ),
    ]
    await channel.close()
    return results


async def _redis_read_p50(prefix: str, entities: list[str], rows: int) -> float:
    import redis.asyncio as aioredis

    from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore
    from driftline.kit.settings import RedisSettings

    client = aioredis.Redis.from_url(RedisSettings().url)
    store = AsyncOnlineStore(client, TRANSACTION_FEATURES, key_prefix=f"{prefix}fs")
    samples = []
    for i in range(1500):
        ids = [entities[(i * rows + j) % len(entities)] for j in range(rows)]
        started = time.perf_counter()
        await store.read_frame(ids)  # the service's read: one round trip, the rows column-wise
        samples.append((time.perf_counter() - started) * 1e6)
    await client.aclose()
    return _pct(samples[300:], 0.5)


async def _handler_in_process(prefix: str, entities: list[str], rows: int) -> tuple[float, float]:
    """The service's work for one call without gRPC: ``Predictor.predict`` on the same store and
    model (batcher included), the response filled, and the prediction-log records encoded as the
    log's sender would (not produced). Returns the p50 (µs) and the CPU per call (µs)."""
    import redis.asyncio as aioredis

    from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore
    from driftline.inference.v1 import inference_pb2
    from driftline.kit.settings import RedisSettings
    from driftline.services.inference.batcher import BatchingOptions
    from driftline.services.inference.models import ModelMeta, ModelSlots, Role, RoutingOptions
    from driftline.services.inference.prediction_log import RecordEncoder
    from driftline.services.inference.predictor import PredictInput, PredictionResult, Predictor
    from driftline.services.inference.servicer import fill

    class EncodingSink:
        def __init__(self) -> None:
            self.encoder = RecordEncoder()

        def log_many(self, results: list[PredictionResult]) -> None:
            for result in results:
                self.encoder.encode(result)

    client = aioredis.Redis.from_url(RedisSettings().url)
    store = AsyncOnlineStore(client, TRANSACTION_FEATURES, key_prefix=f"{prefix}fs")
    slots = ModelSlots("fraud", BatchingOptions(), RoutingOptions())
    runtime = SessionFactory(RuntimeOptions(device=Device.CPU)).load(bench_model())
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 1, feature_names=features()), runtime)
    predictor = Predictor(slots=slots, features=store, sink=EncodingSink())
    calls = [
        [PredictInput(entities[(i * rows + j) % len(entities)]) for j in range(rows)]
        for i in range(3000 if rows == 1 else 600)
    ]
    samples = []
    cpu = 0.0
    for i, inputs in enumerate(calls):
        started, started_cpu = time.perf_counter(), time.thread_time()
        results = await predictor.predict(inputs)
        response = inference_pb2.PredictBatchResponse()
        for result in results:
            fill(response.predictions.add(), result, features=False)
        if i >= len(calls) // 5:  # the first fifth warms up
            samples.append((time.perf_counter() - started) * 1e6)
            cpu += time.thread_time() - started_cpu
    await slots.close()
    await store.close()
    return _pct(samples, 0.5), cpu * 1e6 / len(samples)


def _ort_p50(rows: int) -> tuple[float, float]:
    model = SessionFactory(RuntimeOptions(device=Device.CPU)).load(bench_model())
    x = {"input": np.random.default_rng(0).normal(size=(rows, N_FEATURES)).astype(np.float32)}
    for _ in range(200):
        model.run(x)
    samples = []
    for _ in range(3000):
        started = time.perf_counter()
        model.run(x)
        samples.append((time.perf_counter() - started) * 1e6)
    p50 = _pct(samples, 0.5)
    return p50, 1e6 / statistics.mean(samples)


def _setup(prefix: str, redis_url: str | None = None) -> list[str]:
    """The bench's topics, and its entities' features in the stack's Redis (or ``redis_url``'s)."""
    import redis

    from driftline.featurestore import TRANSACTION_FEATURES, OnlineStore
    from driftline.kit.settings import KafkaSettings, RedisSettings
    from driftline.kit.testing import create_test_topics
    from driftline.kit.topics import MODEL_EVENTS, PREDICTIONS

    create_test_topics(KafkaSettings(), [PREDICTIONS.namespaced(prefix), MODEL_EVENTS.namespaced(prefix)])
    store = OnlineStore(
        redis.Redis.from_url(redis_url or RedisSettings().url), TRANSACTION_FEATURES, key_prefix=f"{prefix}fs"
    )
    entities = [f"card-{i}" for i in range(N_ENTITIES)]
    rng = np.random.default_rng(1)
    now = time.time()
    store.write_many([(e, rng.normal(10, 3, N_FEATURES).tolist(), now) for e in entities])
    store.close()
    return entities


def _teardown(prefix: str, entities: list[str], redis_url: str | None = None) -> None:
    import redis

    from driftline.featurestore import TRANSACTION_FEATURES, OnlineStore
    from driftline.kit.settings import KafkaSettings, RedisSettings
    from driftline.kit.testing import delete_topics
    from driftline.kit.topics import MODEL_EVENTS, PREDICTIONS

    store = OnlineStore(
        redis.Redis.from_url(redis_url or RedisSettings().url), TRANSACTION_FEATURES, key_prefix=f"{prefix}fs"
    )
    store.delete(entities)
    store.close()
    delete_topics(KafkaSettings(), [PREDICTIONS.namespaced(prefix), MODEL_EVENTS.namespaced(prefix)])


def run_service(seconds: float, concurrency: int, device: str, view_name: str) -> None:
    from driftline.inference.v1 import inference_pb2
    from driftline.kit.testing import unique_prefix

    view = inference_pb2.PredictionView.Value(f"PREDICTION_VIEW_{view_name.upper()}")

    prefix = unique_prefix()
    entities = _setup(prefix)
    try:
        echo, port_text = _spawn(["echo"])
        try:
            echo_results = asyncio.run(
                _drive(int(port_text), echo.pid, entities, "echo", seconds, concurrency, view)
            )
        finally:
            echo.terminate()
            echo.wait(10)
        kit_echo, port_text = _spawn(["echo-kit"])
        try:
            kit_results = asyncio.run(
                _drive(
                    int(port_text),
                    kit_echo.pid,
                    entities,
                    "echo on kit GrpcServer",
                    seconds,
                    concurrency,
                    view,
                )
            )
        finally:
            kit_echo.terminate()
            kit_echo.wait(10)
        server, text = _spawn(["inference", "--prefix", prefix, "--device", device])
        port_text, provider, metrics_port = text.split()
        try:
            results = asyncio.run(
                _drive(
                    int(port_text),
                    server.pid,
                    entities,
                    "inference",
                    seconds,
                    concurrency,
                    view,
                    _stage_reader(int(metrics_port)),
                )
            )
        finally:
            server.terminate()
            server.wait(30)
        redis_1 = asyncio.run(_redis_read_p50(prefix, entities, 1))
        redis_64 = asyncio.run(_redis_read_p50(prefix, entities, BATCH))
        in_process = {rows: asyncio.run(_handler_in_process(prefix, entities, rows)) for rows in (1, BATCH)}
        ort_1, ort_rps_1 = _ort_p50(1)
        ort_64, ort_rps_64 = _ort_p50(BATCH)
    finally:
        _teardown(prefix, entities)
    _report(
        echo_results,
        kit_results,
        results,
        provider,
        {1: redis_1, BATCH: redis_64},
        {1: (ort_1, ort_rps_1), BATCH: (ort_64, ort_rps_64)},
        in_process,
        concurrency,
        view_name,
    )


def _report(
    echo: list[Result],
    kit_echo: list[Result],
    served: list[Result],
    provider: str,
    redis_p50: dict[int, float],
    ort: dict[int, tuple[float, float]],
    in_process: dict[int, tuple[float, float]],
    concurrency: int,
    view: str,
) -> None:
    table = Table(
        title=(
            f"inference vs echo vs onnxruntime in-process (provider {provider}, {concurrency} in flight, "
            f"{view} view)"
        )
    )
    columns = (
        *("call", "p50 µs", "p99 µs", "max req/s", "rows/s", "server CPU µs/call", "of it, loop thread"),
        *("p50 / echo", "req/s / echo", "CPU / echo", "p50 / ort"),
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "call" else "right")
    verdicts = []
    for e, k, s in zip(echo, kit_echo, served, strict=True):
        ort_p50, ort_rps = ort[s.rows]
        table.add_row(
            e.name,
            f"{e.p50_us:.0f}",
            f"{e.p99_us:.0f}",
            f"{e.rps:.0f}",
            f"{e.rows_per_s:.0f}",
            f"{e.server_cpu_us:.0f}",
            f"{e.loop_cpu_us:.0f}",
            "1.00",
            "1.00",
            "1.00",
            "",
        )
        table.add_row(
            k.name,
            f"{k.p50_us:.0f}",
            f"{k.p99_us:.0f}",
            f"{k.rps:.0f}",
            f"{k.rows_per_s:.0f}",
            f"{k.server_cpu_us:.0f}",
            f"{k.loop_cpu_us:.0f}",
            f"{k.p50_us / e.p50_us:.2f}",
            f"{k.rps / e.rps:.2f}",
            f"{k.server_cpu_us / e.server_cpu_us:.2f}",
            "",
        )
        table.add_row(
            s.name,
            f"{s.p50_us:.0f}",
            f"{s.p99_us:.0f}",
            f"{s.rps:.0f}",
            f"{s.rows_per_s:.0f}",
            f"{s.server_cpu_us:.0f}",
            f"{s.loop_cpu_us:.0f}",
            f"{s.p50_us / e.p50_us:.2f}",
            f"{s.rps / e.rps:.2f}",
            f"{s.server_cpu_us / e.server_cpu_us:.2f}",
            f"{s.p50_us / ort_p50:.1f}",
        )
        table.add_row(
            f"onnxruntime run({s.rows}) in-process",
            f"{ort_p50:.0f}",
            "",
            f"{ort_rps:.0f}",
            f"{ort_rps * s.rows:.0f}",
            "",
            "",
            "",
            "",
            "",
            "1.0",
        )
        budget = e.p50_us + redis_p50[s.rows] + 100
        verdicts.append(
            f"{s.name}: p50 {s.p50_us:.0f} µs vs target {budget:.0f} µs (echo {e.p50_us:.0f} "
            f"+ online-store read of {s.rows} {redis_p50[s.rows]:.0f} + 100) -> "
            f"{'MET' if s.p50_us <= budget else 'MISSED'}; "
            f"throughput {s.rps / e.rps:.2f}x echo (target 0.70) -> "
            f"{'MET' if s.rps >= 0.7 * e.rps else 'MISSED'}"
        )
    console.print(table)
    for line in verdicts:
        console.print(line)
    for s in served:
        if s.stages_us:
            st = s.stages_us
            handler, read, model, queue = (st.get(k, 0.0) for k in ("total", "features", "model", "queue"))
            console.print(
                f"{s.name}, server side, mean per call one at a time: handler {handler:.0f} µs = "
                f"online-store read {read:.0f} + queue {queue:.0f} + model {model:.0f} + other "
                f"{handler - read - queue - model:.0f}; outside it (gRPC, network, client): "
                f"{s.p50_us - handler:.0f} µs of the p50"
            )
    for s in served:
        p50, cpu = in_process[s.rows]
        console.print(
            f"{s.name}, the same work in-process without gRPC (the loop of this process, log records "
            f"encoded, not sent): p50 {p50:.0f} µs, {cpu:.0f} µs of CPU a call, against the server's "
            f"loop thread's {s.loop_cpu_us:.0f} a call under load"
        )


# --- the compiled data plane (ADR 0011) ----------------------------------------------------------


def _spawn_binary(args: list[str], port_file: Path) -> subprocess.Popen[bytes]:
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{args[0]} did not start")
        time.sleep(0.05)
    time.sleep(0.2)
    return proc


def run_dataplane(seconds: float, concurrency: int, view_name: str) -> None:
    """Same run, same client, same entities: the Python echo (#6's reference), the echo on tonic,
    the Python inference service, and the compiled data plane; the #6 targets judged for both
    services against both echoes."""
    from driftline.featurestore import TRANSACTION_FEATURES
    from driftline.inference.v1 import inference_pb2
    from driftline.kit.settings import MetricsSettings
    from driftline.kit.testing import unique_prefix
    from driftline.kit.topics import PREDICTIONS
    from driftline.services.inference.config import Settings
    from driftline.services.inference.dataplane import DataPlane, binary_path
    from driftline.services.inference.models import ModelMeta

    view = inference_pb2.PredictionView.Value(f"PREDICTION_VIEW_{view_name.upper()}")
    prefix = unique_prefix()
    entities = _setup(prefix)
    workdir = Path(f"/tmp/driftline-bench-{os.getpid()}-dataplane")
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Result]] = {}

    def drive(label: str, port: int, pid: int) -> None:
        runs[label] = asyncio.run(_drive(port, pid, entities, label, seconds, concurrency, view))

    try:
        echo, port_text = _spawn(["echo"])
        try:
            drive("echo (grpc.aio)", int(port_text), echo.pid)
        finally:
            echo.terminate()
            echo.wait(10)
        port_file = workdir / "echo.json"
        tonic_echo = _spawn_binary([str(binary_path()), "echo", str(port_file), *features()], port_file)
        try:
            drive("echo (tonic)", json.loads(port_file.read_text())["port"], tonic_echo.pid)
        finally:
            tonic_echo.terminate()
            tonic_echo.wait(10)
        server, text = _spawn(["inference", "--prefix", prefix, "--device", "cpu"])
        try:
            drive("inference (Python)", int(text.split()[0]), server.pid)
        finally:
            server.terminate()
            server.wait(30)
        settings = Settings(metrics=MetricsSettings(enabled=False), online_store_key_prefix=f"{prefix}fs")
        predictions = PREDICTIONS.namespaced(prefix)
        feature_set = TRANSACTION_FEATURES
        plane = DataPlane(settings, feature_set=feature_set, predictions=predictions, workdir=workdir)
        port = plane.start()
        try:
            artifact = bench_model()
            digest = hashlib.sha256(artifact).hexdigest()
            plane.load_model(artifact, ModelMeta("fraud", 1, digest, features()))
            drive("data plane (Rust)", port, plane.pid)
        finally:
            plane.stop()
        redis_p50 = {rows: asyncio.run(_redis_read_p50(prefix, entities, rows)) for rows in (1, BATCH)}
    finally:
        _teardown(prefix, entities)
        shutil.rmtree(workdir, ignore_errors=True)
    _report_dataplane(runs, redis_p50, concurrency, view_name)


def _report_dataplane(
    runs: dict[str, list[Result]], redis_p50: dict[int, float], concurrency: int, view: str
) -> None:
    title = f"inference: Python service vs compiled data plane ({concurrency} in flight, {view} view)"
    table = Table(title=title)
    columns = ("call", "p50 µs", "p99 µs", "max req/s", "server CPU µs/call")
    echoes = ("echo (grpc.aio)", "echo (tonic)")
    for column in (*columns, *(f"p50 / {e}" for e in echoes), *(f"req/s / {e}" for e in echoes)):
        table.add_column(column, justify="left" if column == "call" else "right")
    verdicts = []
    for k in range(2):
        reference = [runs[e][k] for e in echoes]
        for label, results in runs.items():
            r = results[k]
            table.add_row(
                r.name,
                f"{r.p50_us:.0f}",
                f"{r.p99_us:.0f}",
                f"{r.rps:.0f}",
                f"{r.server_cpu_us:.0f}",
                *(f"{r.p50_us / e.p50_us:.2f}" for e in reference),
                *(f"{r.rps / e.rps:.2f}" for e in reference),
            )
            if label in echoes:
                continue
            for echo_label, e in zip(echoes, reference, strict=True):
                budget = e.p50_us + redis_p50[r.rows] + 100
                verdicts.append(
                    f"{r.name} against {echo_label}: p50 {r.p50_us:.0f} µs vs target {budget:.0f} "
                    f"(echo {e.p50_us:.0f} + read of {r.rows} {redis_p50[r.rows]:.0f} + 100) -> "
                    f"{'MET' if r.p50_us <= budget else 'MISSED'}; throughput {r.rps / e.rps:.2f}x "
                    f"(target 0.70) -> {'MET' if r.rps >= 0.7 * e.rps else 'MISSED'}"
                )
    console.print(table)
    for line in verdicts:
        console.print(line)


# --- the cost of TLS on the serving port -------------------------------------------------------


def run_tls(seconds: float, concurrency: int, view_name: str, rounds: int) -> None:
    """The compiled data plane serving plaintext, TLS and mutual TLS, and reading the online store
    over mutual TLS, started again for each mode on the same entities and model, the modes
    alternating over ``rounds``; each mode's medians against plaintext's in the same run. The
    store is a redis-server of the bench's own that serves the same keys on a plaintext port and
    on a mutual-TLS one."""
    import grpc

    from driftline.featurestore import TRANSACTION_FEATURES
    from driftline.inference.v1 import inference_pb2
    from driftline.kit.settings import MetricsSettings, RedisSettings
    from driftline.kit.testing import Authority, ServerTls, free_port, redis_server, unique_prefix
    from driftline.kit.topics import PREDICTIONS
    from driftline.services.inference.config import InferenceGrpcSettings, Settings
    from driftline.services.inference.dataplane import DataPlane
    from driftline.services.inference.models import ModelMeta

    view = inference_pb2.PredictionView.Value(f"PREDICTION_VIEW_{view_name.upper()}")
    prefix = unique_prefix()
    workdir = Path(f"/tmp/driftline-bench-{os.getpid()}-tls")
    workdir.mkdir(parents=True, exist_ok=True)
    # Valid for a month: a certificate about to end makes the server warn at each start.
    month = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    authority = Authority(workdir, "bench", not_after=month)
    server, client = authority.issue("inference"), authority.issue("client")
    ca = authority.ca_file.read_bytes()
    tls_port, plain_port = free_port(), free_port()
    plain_store = RedisSettings(url=f"redis://127.0.0.1:{plain_port}/0")
    tls_store = RedisSettings(
        url=f"rediss://127.0.0.1:{tls_port}/0",
        tls_ca_file=authority.ca_file,
        tls_cert_file=client.cert,
        tls_key_file=client.key,
    )
    server_tls = {"tls_cert_file": server.cert, "tls_key_file": server.key}
    mutual_tls = {**server_tls, "tls_client_ca_file": authority.ca_file}
    # mode: (the public port's TLS, the client's credentials, the online store)
    modes: dict[str, tuple[dict[str, Path], grpc.ChannelCredentials | None, RedisSettings]] = {
        "plaintext": ({}, None, plain_store),
        "TLS": (server_tls, grpc.ssl_channel_credentials(ca), plain_store),
        "mutual TLS": (
            mutual_tls,
            grpc.ssl_channel_credentials(ca, client.key.read_bytes(), client.cert.read_bytes()),
            plain_store,
        ),
        "store over mutual TLS": ({}, None, tls_store),
    }
    runs: dict[str, list[list[Result]]] = {mode: [] for mode in modes}
    artifact = bench_model()
    meta = ModelMeta("fraud", 1, hashlib.sha256(artifact).hexdigest(), features())
    store_server = ServerTls(server.cert, server.key, authority.ca_file)
    with redis_server(tls_port, workdir, tls=store_server, plaintext_port=plain_port):
        entities = _setup(prefix, plain_store.url)
        try:
            for round_ in range(rounds):
                for mode, (grpc_tls, credentials, store) in modes.items():
                    settings = Settings(
                        grpc=InferenceGrpcSettings(port=0, **grpc_tls),
                        metrics=MetricsSettings(enabled=False),
                        redis=store,
                        online_store_key_prefix=f"{prefix}fs",
                    )
                    plane = DataPlane(
                        settings,
                        feature_set=TRANSACTION_FEATURES,
                        predictions=PREDICTIONS.namespaced(prefix),
                        workdir=workdir / f"{round_}-{len(runs[mode])}-{mode.replace(' ', '-')}",
                    )
                    port = plane.start()
                    try:
                        plane.load_model(artifact, meta)
                        runs[mode].append(
                            asyncio.run(
                                _drive(
                                    port,
                                    plane.pid,
                                    entities,
                                    mode,
                                    seconds,
                                    concurrency,
                                    view,
                                    credentials=credentials,
                                )
                            )
                        )
                    finally:
                        plane.stop()
        finally:
            _teardown(prefix, entities, plain_store.url)
            shutil.rmtree(workdir, ignore_errors=True)
    _report_tls(runs, concurrency, view_name)


def _report_tls(runs: dict[str, list[list[Result]]], concurrency: int, view: str) -> None:
    rounds = len(runs["plaintext"])
    table = Table(
        title=f"data plane: the cost of TLS ({concurrency} in flight, {view} view, median of {rounds} rounds)"
    )
    for column in ("call", "p50 µs", "p99 µs", "max req/s", "p50 / plaintext", "req/s / plaintext"):
        table.add_column(column, justify="left" if column == "call" else "right")
    for k in range(2):
        plain = _medians([r[k] for r in runs["plaintext"]])
        for results in runs.values():
            p50, p99, rps = _medians([r[k] for r in results])
            table.add_row(
                results[0][k].name,
                f"{p50:.0f}",
                f"{p99:.0f}",
                f"{rps:.0f}",
                f"{p50 / plain[0]:.2f}",
                f"{rps / plain[2]:.2f}",
            )
    console.print(table)


def _medians(results: list[Result]) -> tuple[float, float, float]:
    return (
        statistics.median(r.p50_us for r in results),
        statistics.median(r.p99_us for r in results),
        statistics.median(r.rps for r in results),
    )


# --- curve over batch sizes -------------------------------------------------------------------


def _device_name(provider: str) -> str:
    if provider == "CUDAExecutionProvider" and shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "CUDA GPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(run: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per call of ``run`` over ``seconds`` (at least 5 calls), after 5 unmeasured."""
    for _ in range(5):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


def _curve_model(model_kind: str, hidden: int) -> tuple[bytes, str]:
    if model_kind == "mlp":
        return mlp_model(N_FEATURES, hidden=hidden), f"MLP 12-{hidden}-{hidden}-{hidden}-1"
    return bench_model(), "logistic regression, 12 features"


def run_curve(
    device: str, max_batch: int, plot: Path, seconds_per_point: float, model_kind: str, hidden: int
) -> None:
    factory = SessionFactory(RuntimeOptions(device=Device(device), intra_op_threads=os.cpu_count() or 1))
    data, description = _curve_model(model_kind, hidden)
    model = factory.load(data)
    provider = model.provider
    console.print(
        f"device: {_device_name(provider)}; provider: {provider}; I/O binding: {model.use_io_binding}; "
        f"model: {description}"
    )
    sizes = [1 << k for k in range(max_batch.bit_length()) if (1 << k) <= max_batch]
    rng = np.random.default_rng(0)
    points = []
    table = Table(title=f"raw session runs on {provider}")
    columns = ["batch", "p50 ms", "p99 ms", "runs/s", "rows/s"]
    if model.use_io_binding:
        columns.append("p50 ms without I/O binding")
    for column in columns:
        table.add_column(column, justify="right")

    timed = functools.partial(_timed, seconds=seconds_per_point)
    for batch in sizes:
        x = {"input": rng.normal(size=(batch, N_FEATURES)).astype(np.float32)}
        samples = timed(functools.partial(model.run, x))
        p50, p99 = _pct(samples, 0.5), _pct(samples, 0.99)
        runs = 1 / statistics.mean(samples)
        points.append((batch, p50, runs * batch))
        row = [str(batch), f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}", f"{runs:.0f}", f"{runs * batch:.0f}"]
        if model.use_io_binding:
            plain = timed(functools.partial(model._session.run, None, x))
            row.append(f"{_pct(plain, 0.5) * 1e3:.3f}")
        table.add_row(*row)
    console.print(table)
    title = f"Driftline inference, raw ONNX Runtime session runs: {_device_name(provider)}, {provider}"
    _plot({"session run": points}, title, plot)


def _dataplane_kit(
    directory: Path, device: str, model_kind: str, hidden: int
) -> tuple[Path, bytes, OnnxModel]:
    """Writes ``model.onnx`` and ``spec.pb`` (the ``ModelSpec`` the control plane would send, its
    path as ``directory`` names it) for ``driftline-dataplane curve``; returns the spec's path,
    the model and the session this process loaded it in (on ``device`` where that works here).
    ``device=cuda`` asks the data plane for CUDA even where this process has none: a kit for a
    GPU machine."""
    from driftline.featurestore import TRANSACTION_FEATURES
    from driftline.services.inference.config import Settings
    from driftline.services.inference.dataplane import model_spec
    from driftline.services.inference.models import ModelMeta

    threads = os.cpu_count() or 1
    data, _ = _curve_model(model_kind, hidden)
    # For a kit made on a machine without CUDA, this process's session falls back to the CPU.
    here = Device.AUTO if device == "cuda" else Device(device)
    runtime = SessionFactory(RuntimeOptions(device=here, intra_op_threads=threads)).load(data)
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / "model.onnx"
    artifact.write_bytes(data)
    spec = model_spec(
        Settings(intra_op_threads=threads),
        feature_set=TRANSACTION_FEATURES,
        artifact=data,
        meta=ModelMeta("bench", 1, hashlib.sha256(data).hexdigest(), features()),
        path=artifact,
        runtime=runtime,
    )
    if device == "cuda":
        spec.device = "cuda"  # fails the load where CUDA does not work: never a silent CPU curve
    spec_path = directory / "spec.pb"
    spec_path.write_bytes(spec.SerializeToString())
    return spec_path, data, runtime


def _score_check(head: dict, data: bytes) -> None:
    """The data plane's scores of its check rows on its device against a CPU session's here."""
    from driftline.services.inference.models import score_column, score_output

    cpu = SessionFactory(RuntimeOptions(device=Device.CPU)).load(data)
    rows = np.asarray(head["check"]["rows"], dtype=np.float32)
    expected = score_column(cpu.run({cpu.inputs[0].name: rows})[score_output(cpu.outputs) or 0])
    gap = float(np.max(np.abs(np.asarray(head["check"]["scores"]) - expected)))
    verdict = "agree" if gap <= 1e-4 else "DISAGREE"
    console.print(
        f"scores of 8 rows, data plane on {head['provider']} vs CPU in this process: "
        f"max gap {gap:.2e} ({verdict})"
    )


def run_dataplane_curve(
    device: str,
    max_batch: int,
    plot: Path,
    seconds_per_point: float,
    model_kind: str,
    hidden: int,
    kit: Path | None = None,
    results: Path | None = None,
    rounds: int = 3,
) -> None:
    """The compiled data plane's curve: its model loaded as ``LoadModel`` loads it (the device
    the control plane's session chose, I/O binding on CUDA), each size run through its batcher
    as a lone call (``driftline-dataplane curve``), against the same session sizes run by ONNX
    Runtime in this process (the Python runtime, I/O binding on CUDA) in the same run, in
    ``rounds`` alternating rounds (medians reported).

    ``kit``: only write the spec and model for a run elsewhere (a GPU machine, with the binary
    and the GPU wheel's ``libonnxruntime.so``); ``results``: show that run's JSON lines (with no
    in-process baseline, which is that machine's to measure)."""
    from driftline.services.inference.dataplane import binary_path, ort_library

    _, description = _curve_model(model_kind, hidden)
    if kit is not None:
        spec_path, _, _ = _dataplane_kit(kit, device, model_kind, hidden)
        console.print(
            f"wrote {spec_path} and {kit / 'model.onnx'} ({description}, device {device}); run there, from "
            f"this directory:\n  driftline-dataplane curve {spec_path} LIBONNXRUNTIME {max_batch} "
            f"{seconds_per_point} > curve.jsonl"
        )
        return
    runtime: OnnxModel | None = None
    # Per batch size, each round's (p50 s, p99 s, rows/s): the data plane's, then this process's.
    served: dict[int, list[tuple[float, float, float]]] = {}
    raw: dict[int, list[tuple[float, float, float]]] = {}
    if results is not None:
        data, _ = _curve_model(model_kind, hidden)
        head, *lines = _curve_lines(results.read_text())
        for point in lines:
            served[point["batch"]] = [(point["p50_s"], point["p99_s"], point["rows_per_s"])]
    else:
        workdir = Path(f"/tmp/driftline-bench-{os.getpid()}-curve")
        rng = np.random.default_rng(0)
        try:
            spec_path, data, runtime = _dataplane_kit(workdir, device, model_kind, hidden)
            args = [str(binary_path()), "curve", str(spec_path), str(ort_library()), str(max_batch)]
            # Rounds alternate between the two, so a change in the machine's speed falls on both.
            for _ in track(range(rounds), description="rounds", console=console):
                out = subprocess.run(
                    [*args, str(seconds_per_point)], capture_output=True, text=True, check=False
                )
                if out.returncode != 0:
                    raise RuntimeError(
                        f"driftline-dataplane curve failed: {out.stderr.strip() or out.stdout.strip()}"
                    )
                head, *lines = _curve_lines(out.stdout)
                for point in lines:
                    batch = point["batch"]
                    served.setdefault(batch, []).append((point["p50_s"], point["p99_s"], point["rows_per_s"]))
                    x = {"input": rng.uniform(-1, 1, size=(batch, N_FEATURES)).astype(np.float32)}
                    samples = _timed(functools.partial(runtime.run, x), seconds_per_point)
                    p50, p99 = _pct(samples, 0.5), _pct(samples, 0.99)
                    raw.setdefault(batch, []).append((p50, p99, batch / statistics.mean(samples)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    provider = head["provider"]
    where = _device_name(provider) if results is None else f"the machine that wrote {results.name}"
    console.print(
        f"device: {where}; data plane: {provider}, I/O binding {head['io_binding']}"
        + (f"; this process: {runtime.provider}, I/O binding {runtime.use_io_binding}" if runtime else "")
        + f"; model: {description}"
    )
    _score_check(head, data)
    title = "data plane runs (through its batcher)" + (" vs ONNX Runtime in this process" if runtime else "")
    rounds_seen = len(next(iter(served.values())))
    table = Table(title=f"{title}, {provider}; medians of {rounds_seen} round(s)")
    columns = ["batch", "data plane p50 ms", "p99 ms", "rows/s"]
    if runtime is not None:
        columns += ["in-process p50 ms", "p99 ms ", "rows/s ", "p50 ratio", "p50 ratio per round"]
    for column in columns:
        table.add_column(column, justify="right")
    curves: dict[str, list[tuple[int, float, float]]] = {"data plane (batcher + run)": []}

    def medians(points: list[tuple[float, float, float]]) -> tuple[float, ...]:
        return tuple(statistics.median(column) for column in zip(*points, strict=True))

    for batch, points in served.items():
        p50, p99, rows_s = medians(points)
        curves["data plane (batcher + run)"].append((batch, p50, rows_s))
        row = [str(batch), f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}", f"{rows_s:.0f}"]
        if runtime is not None:
            base50, base99, base_rows = medians(raw[batch])
            curves.setdefault("in-process session run", []).append((batch, base50, base_rows))
            each = " ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(points, raw[batch], strict=True))
            row += [
                f"{base50 * 1e3:.3f}",
                f"{base99 * 1e3:.3f}",
                f"{base_rows:.0f}",
                f"{p50 / base50:.2f}",
                each,
            ]
        table.add_row(*row)
    console.print(table)
    title = f"Driftline data plane{' vs in-process ONNX Runtime' if runtime else ''}: {where}, {provider}"
    _plot(curves, title, plot)


def _curve_lines(text: str) -> list[dict]:
    """``driftline-dataplane curve``'s JSON lines: its head, then a point per batch size."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _plot(curves: dict[str, list[tuple[int, float, float]]], title: str, path: Path) -> None:
    """Latency and throughput over batch size, one line per curve: (batch, p50 s, rows/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, points in curves.items():
        batches = [p[0] for p in points]
        left.plot(batches, [p[1] * 1e3 for p in points], marker="o", label=label)
        right.plot(batches, [p[2] for p in points], marker="o", label=label)
    left.set(
        xscale="log", yscale="log", xlabel="batch size (rows)", ylabel="p50 latency (ms)", title="latency"
    )
    right.set(xscale="log", yscale="log", xlabel="batch size (rows)", ylabel="rows / s", title="throughput")
    for ax in (left, right):
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches], rotation=45)
        ax.grid(True, which="both", alpha=0.3)
        if len(curves) > 1:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    console.print(f"plot written to {path}")


@click.command()
@click.option(
    "--only",
    type=click.Choice(["all", "service", "curve", "dataplane", "dataplane-curve", "tls"]),
    default="all",
    show_default=True,
    help="all: service and curve. dataplane: the compiled data plane against both echoes; "
    "dataplane-curve: its runs over batch sizes against in-process ones; tls: the data plane "
    "serving plaintext, TLS and mutual TLS, and reading its store over mutual TLS (none of these three "
    "in all).",
)
@click.option(
    "--device",
    type=click.Choice([d.value for d in Device]),
    default="auto",
    show_default=True,
    help="Where models run: auto uses CUDA when a session can be created on it.",
)
@click.option(
    "--seconds",
    default=8.0,
    show_default=True,
    help="Seconds per service measurement (half latency, half load).",
)
@click.option(
    "--concurrency", default=16, show_default=True, help="Calls in flight during the throughput phase."
)
@click.option("--max-batch", default=4096, show_default=True, help="Largest batch of the curve.")
@click.option(
    "--seconds-per-point", default=0.5, show_default=True, help="Time spent on each batch size of the curve."
)
@click.option(
    "--model", "model_kind", type=click.Choice(["mlp", "logistic"]), default="mlp", show_default=True
)
@click.option("--hidden", default=256, show_default=True, help="Width of the curve's MLP layers.")
@click.option(
    "--view",
    type=click.Choice(["basic", "full"]),
    default="basic",
    show_default=True,
    help="The predictions' view: full adds the 12 features used to each (the echo answers alike).",
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=Path("/tmp/driftline-bench/inference_curve.png"),
    show_default=True,
)
@click.option(
    "--kit",
    type=click.Path(path_type=Path),
    help="dataplane-curve: only write the spec and model for a run of driftline-dataplane curve elsewhere.",
)
@click.option(
    "--results",
    type=click.Path(exists=True, path_type=Path),
    help="dataplane-curve: show the JSON lines such a run wrote.",
)
@click.option("--rounds", default=3, show_default=True, help="dataplane-curve and tls: alternating rounds.")
@click.option("--serve", type=click.Choice(["echo", "echo-kit", "inference"]), hidden=True)
@click.option("--port-file", type=click.Path(path_type=Path), hidden=True)
@click.option("--prefix", default="", hidden=True)
def main(
    only: str,
    device: str,
    seconds: float,
    concurrency: int,
    max_batch: int,
    seconds_per_point: float,
    model_kind: str,
    hidden: int,
    view: str,
    plot: Path,
    kit: Path | None,
    results: Path | None,
    rounds: int,
    serve: str | None,
    port_file: Path | None,
    prefix: str,
) -> None:
    if serve in ("echo", "echo-kit"):
        assert port_file is not None
        asyncio.run(_serve_echo(port_file, kit=serve == "echo-kit"))
        return
    if serve == "inference":
        assert port_file is not None
        asyncio.run(_serve_inference(port_file, prefix, device))
        return
    if only in ("all", "service"):
        run_service(seconds, concurrency, device, view)
    if only == "dataplane":
        run_dataplane(seconds, concurrency, view)
    if only == "tls":
        run_tls(seconds, concurrency, view, rounds)
    if only in ("all", "curve"):
        run_curve(device, max_batch, plot, seconds_per_point, model_kind, hidden)
    if only == "dataplane-curve":
        run_dataplane_curve(
            device, max_batch, plot, seconds_per_point, model_kind, hidden, kit, results, rounds
        )


if __name__ == "__main__":
    main()
