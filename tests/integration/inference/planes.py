"""The compiled data plane's test kit: a data plane started by its Python control plane on a
namespaced topic and Redis key prefix (the ``start_plane`` fixture, exported by conftest), with
stubs for both of its gRPC APIs, and the models and rows the tests score."""

from __future__ import annotations

import contextlib
import hashlib
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore, StalenessPolicy
from driftline.inference.v1 import inference_pb2_grpc
from driftline.kit.redis_clients import async_redis_client
from driftline.kit.settings import KafkaSettings, MetricsSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import PREDICTIONS, Topic
from driftline.kserve.v2 import grpc_predict_v2_pb2_grpc
from driftline.services.inference.config import InferenceGrpcSettings, Settings
from driftline.services.inference.dataplane import DataPlane
from driftline.services.inference.models import ModelMeta, Role
from driftline.services.inference.testing import logistic_model

FEATURES = tuple(TRANSACTION_FEATURES.feature_names)
WEIGHTS = [0.02, 0.01, -0.03, 0.005, 0.2, 0.1, 0.001, -0.002, 0.3, 0.8, 0.4, 0.6]
MAX_ENTITIES = 8
MAX_MESSAGE_BYTES = 64 * 1024


def version_bytes(version: int) -> bytes:
    """Each version scores differently, so a response tells which one served it."""
    return logistic_model(WEIGHTS, bias=-1.0 + 0.25 * version)


def meta(version: int, artifact: bytes) -> ModelMeta:
    return ModelMeta("fraud", version, hashlib.sha256(artifact).hexdigest(), FEATURES)


def row(i: int) -> list[float]:
    return [float(i), 1.0 + i, 2.0, 3.0 * i, 1.0, 2.0, 0.5, 30.0, float(i % 3), float(i % 2), 0.25, 1.0]


@dataclass
class Plane:
    prefix: str
    store: AsyncOnlineStore
    stub: inference_pb2_grpc.InferenceServiceStub
    kserve: grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub
    health: health_pb2_grpc.HealthStub
    process: DataPlane
    predictions: Topic
    kafka: KafkaSettings
    entities: list[str] = field(default_factory=list)

    async def put(self, values: list[float], *, age_s: float = 1.0) -> str:
        entity = f"{self.prefix}card-{len(self.entities)}"
        await self.store.write(entity, values, time.time() - age_s)
        self.entities.append(entity)
        return entity

    def load(self, version: int, role: Role = Role.CHAMPION) -> None:
        artifact = version_bytes(version)
        self.process.load_model(artifact, meta(version, artifact), role=role)

    @staticmethod
    def scores(rows: list[list[float]], version: int = 3) -> list[float]:
        """ONNX Runtime in this process, on the same rows."""
        session = onnxruntime.InferenceSession(version_bytes(version), providers=["CPUExecutionProvider"])
        matrix = np.asarray(rows, dtype=np.float32)
        return session.run(["probabilities"], {"input": matrix})[0][:, 1].astype(float).tolist()

    async def serving(self) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""))
        return reply.status

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.process.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


def settings_of(
    kafka: KafkaSettings,
    redis: RedisSettings,
    prefix: str,
    default_deadline_s: float = 2.0,
    server_tls: dict[str, Path] | None = None,
    metrics: MetricsSettings | None = None,
    **kwargs: Any,
) -> Settings:
    return Settings(
        grpc=InferenceGrpcSettings(
            port=0,
            max_message_bytes=MAX_MESSAGE_BYTES,
            default_deadline_s=default_deadline_s,
            **(server_tls or {}),
        ),
        kafka=kafka,
        redis=redis,
        metrics=metrics or MetricsSettings(enabled=False),  # enabled: the Python side's own
        max_entities_per_call=MAX_ENTITIES,
        online_store_key_prefix=f"{prefix}fs",
        **kwargs,
    )


@pytest.fixture
async def start_plane(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> AsyncIterator[Callable[..., Plane]]:
    """``start_plane(policy=..., redis=..., load=3, credentials=None, **settings)``: a data plane
    on a namespaced topic and key prefix serving version ``load`` (None: no model), with
    ``settings`` (batching, ``default_deadline_s``, ``server_tls``, ``metrics``) over the tests' own, reached
    over TLS with ``credentials`` when given, stopped and cleaned up after the test."""
    async with planes(kafka_settings, redis_settings, tmp_path) as start:
        yield start


@contextlib.asynccontextmanager
async def planes(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> AsyncIterator[Callable[..., Plane]]:
    """``start_plane``'s factory on any broker (a secured one, say)."""
    prefix = unique_prefix()
    predictions = PREDICTIONS.namespaced(prefix)
    create_test_topics(kafka_settings, [predictions])
    redis_client = aioredis.Redis.from_url(redis_settings.url)
    started: list[tuple[Plane, grpc.aio.Channel, aioredis.Redis | None]] = []

    def start(
        policy: StalenessPolicy = StalenessPolicy.SERVE,
        redis: RedisSettings | None = None,
        load: int | None = 3,
        credentials: grpc.ChannelCredentials | None = None,
        **overrides: Any,
    ) -> Plane:
        settings = settings_of(
            kafka_settings, redis or redis_settings, prefix, staleness_policy=policy, **overrides
        )
        process = DataPlane(
            settings,
            feature_set=TRANSACTION_FEATURES,
            predictions=predictions,
            workdir=tmp_path / f"plane-{len(started)}",
        )
        port = process.start()
        own = async_redis_client(redis) if redis else None
        store = AsyncOnlineStore(own or redis_client, TRANSACTION_FEATURES, key_prefix=f"{prefix}fs")
        address = f"127.0.0.1:{port}"
        if credentials is None:
            channel = grpc.aio.insecure_channel(address)
        else:
            channel = grpc.aio.secure_channel(address, credentials)
        stub, health = inference_pb2_grpc.InferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        kserve = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        plane = Plane(prefix, store, stub, kserve, health, process, predictions, kafka_settings)
        started.append((plane, channel, own))
        if load is not None:
            plane.load(load)
        return plane

    try:
        yield start
    finally:
        for plane, channel, own in started:
            await channel.close()
            plane.process.stop()
            if own is not None:
                await own.aclose()
            elif plane.entities:
                await plane.store.delete(plane.entities)
        await redis_client.aclose()
        delete_topics(kafka_settings, [predictions])
