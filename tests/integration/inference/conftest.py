"""An inference server in-process against the real broker and Redis, with the real registry
service (``driftline.services.registry.app.RegistryApp``, SQLite in a temp dir) started in-process
too. Topics, consumer groups and Redis keys are namespaced per test and removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftline.featurestore import TRANSACTION_FEATURES, AsyncOnlineStore
from driftline.inference.v1 import inference_pb2_grpc
from driftline.kit.kafka import KafkaProducer
from driftline.kit.registry_client import RegistryClient
from driftline.kit.settings import KafkaSettings, MetricsSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import MODEL_EVENTS, PREDICTIONS, Topic
from driftline.kserve.v2 import grpc_predict_v2_pb2_grpc
from driftline.registry.v1 import registry_pb2 as rpb
from driftline.services.inference.app import InferenceApp
from driftline.services.inference.config import InferenceGrpcSettings, Settings
from driftline.services.inference.dataplane import DataPlane
from driftline.services.inference.registry_source import RegistryModelSource
from driftline.services.inference.testing import logistic_model
from driftline.services.registry.app import RegistryApp
from driftline.services.registry.config import Settings as RegistrySettings

from .planes import start_plane  # noqa: F401  (the fixture, for every test module here)

TOKEN = "inference-test-token"
MODEL = "fraud"
FEATURES = tuple(TRANSACTION_FEATURES.feature_names)
#: Max message size of the test server: small, so an oversized request is cheap to build.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Deadline the test server gives calls whose client sets none.
DEFAULT_DEADLINE_S = 1.0


def weights(version: int) -> list[float]:
    """Each version scores differently, so a response tells which version served it."""
    return [0.01 * version] + [0.0] * (len(FEATURES) - 1)


def model_bytes(version: int) -> bytes:
    return logistic_model(weights(version), bias=-1.0 + 0.5 * version)


@dataclass
class Stack:
    prefix: str
    registry: RegistryClient
    store: AsyncOnlineStore
    app: InferenceApp
    channel: grpc.aio.Channel
    predictions: Topic
    kafka: KafkaSettings
    entities: list[str] = field(default_factory=list)

    @property
    def inference(self) -> inference_pb2_grpc.InferenceServiceStub:
        return inference_pb2_grpc.InferenceServiceStub(self.channel)

    @property
    def kserve(self) -> grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub:
        return grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status

    async def register(self, version_bytes: bytes) -> int:
        request = rpb.RegisterModelVersionRequest(
            name=MODEL,
            artifact=version_bytes,
            signature=rpb.Signature(feature_names=FEATURES),
            feature_set=TRANSACTION_FEATURES.name,
            feature_set_version=TRANSACTION_FEATURES.version,
            reason="integration test",
        )
        return (await self.registry.register(request)).version

    async def promote(self, version: int, expected: int) -> None:
        await self.registry.set_alias(MODEL, "champion", version, expected, reason="integration test")

    async def put_entities(self, count: int) -> list[str]:
        now = time.time()
        ids = [f"{self.prefix}card-{len(self.entities) + i}" for i in range(count)]
        for i, entity in enumerate(ids):
            values = [float(i % 50)] + [1.0] * (len(FEATURES) - 1)
            await self.store.write(entity, values, now)
        self.entities += ids
        return ids

    model_name = MODEL
    features = FEATURES
    max_message_bytes = MAX_MESSAGE_BYTES
    default_deadline_s = DEFAULT_DEADLINE_S

    @staticmethod
    def model_bytes(version: int) -> bytes:
        return model_bytes(version)

    async def serve_versions(self, count: int) -> list[int]:
        """Register ``count`` versions, make the first the champion, wait until it is live."""
        registered = [await self.register(model_bytes(v + 1)) for v in range(count)]
        await self.promote(registered[0], 0)
        await self.wait_serving_version(registered[0])
        return registered

    async def wait_serving_version(self, version: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            champion = self.app.slots.champion
            if champion is not None and champion.version == version:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"version {version} never went live")


@contextlib.asynccontextmanager
async def running_stack(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    tmp_path: Path,
    *,
    data_plane: bool = False,
    listen: str = "127.0.0.1:0",
) -> AsyncIterator[Stack]:
    """The registry and an inference service: served by the compiled data plane it controls, or
    (``data_plane=False``) by its own Python serving path."""
    prefix = unique_prefix()
    predictions = PREDICTIONS.namespaced(prefix)
    events = MODEL_EVENTS.namespaced(prefix)
    await asyncio.to_thread(create_test_topics, kafka_settings, [predictions, events])
    registry_app = RegistryApp(
        RegistrySettings(
            host="127.0.0.1",
            port=0,
            token=TOKEN,
            data_dir=tmp_path / "registry",
            kafka=kafka_settings,
            metrics=MetricsSettings(enabled=False),
            outbox_poll_interval_s=0.2,
            drain_s=2.0,
        ),
        topic=events,
    )
    registry_port = await registry_app.start()
    registry = RegistryClient(f"127.0.0.1:{registry_port}", TOKEN)
    redis_client = aioredis.Redis.from_url(redis_settings.url)
    store = AsyncOnlineStore(redis_client, TRANSACTION_FEATURES, key_prefix=f"{prefix}fs")
    settings = Settings(
        grpc=InferenceGrpcSettings(
            port=0, max_message_bytes=MAX_MESSAGE_BYTES, drain_s=5.0, default_deadline_s=DEFAULT_DEADLINE_S
        ),
        kafka=kafka_settings,
        redis=redis_settings,
        metrics=MetricsSettings(enabled=False),
        model_name=MODEL,
        max_queue_delay_us=0,
        warmup_batch_sizes=[1, 8],
        warmup_runs=1,
        startup_retry_s=0.3,
        model_events_group_prefix=f"{prefix}inference",
        online_store_key_prefix=f"{prefix}fs",  # the data plane reads the store the app reads
    )
    producer = KafkaProducer(kafka_settings)
    plane = None
    if data_plane:
        plane = DataPlane(
            settings,
            feature_set=TRANSACTION_FEATURES,
            predictions=predictions,
            workdir=tmp_path / "dataplane",
            listen=listen,
        )
    app = InferenceApp(
        settings,
        features=store,
        source=RegistryModelSource(registry, asyncio.get_running_loop()),
        producer=producer,
        default_feature_names=FEATURES,
        predictions_topic=predictions,
        model_events_topic=events,
        data_plane=plane,
    )
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stack = Stack(prefix, registry, store, app, channel, predictions, kafka_settings)
    try:
        yield stack
    finally:
        await channel.close()
        await app.stop()
        await registry_app.stop()
        await registry.close()
        if stack.entities:
            await store.delete(stack.entities)
        await redis_client.aclose()
        await asyncio.to_thread(delete_topics, kafka_settings, [predictions, events])


@pytest.fixture(params=["data_plane", "python"])
async def stack(
    request: pytest.FixtureRequest,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    """The service as clients see it, on each serving path: the same tests hold for both."""
    data_plane = request.param == "data_plane"
    async with running_stack(kafka_settings, redis_settings, tmp_path, data_plane=data_plane) as running:
        yield running


@pytest.fixture
async def python_stack(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The Python serving path, for tests that reach into its objects."""
    async with running_stack(kafka_settings, redis_settings, tmp_path, data_plane=False) as running:
        yield running


@pytest.fixture
async def data_plane_stack(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The compiled data plane serving, for tests of what only it does."""
    async with running_stack(kafka_settings, redis_settings, tmp_path, data_plane=True) as running:
        yield running
