"""The one place the inference service is constructed and wired."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from driftline.inference.v1 import inference_pb2_grpc
from driftline.kit.grpc import GrpcServer, wait_for_signal
from driftline.kit.kafka import KafkaProducer
from driftline.kit.outages import OutagePolicy
from driftline.kit.redis_clients import REDIS_OUTAGE
from driftline.kit.runtime import tune_gc
from driftline.kit.topics import MODEL_EVENTS, PREDICTIONS, Topic
from driftline.kserve.v2 import grpc_predict_v2_pb2_grpc
from driftline.services.inference import kserve, metrics, servicer
from driftline.services.inference.batcher import BatchingOptions
from driftline.services.inference.config import Settings
from driftline.services.inference.dataplane import DataPlane, DataPlaneMirror
from driftline.services.inference.loader import ModelLoader, ModelSource, WarmUp
from driftline.services.inference.model_events import ModelEventsListener
from driftline.services.inference.models import ModelSlots, Role, RoutingOptions
from driftline.services.inference.prediction_log import PredictionLogger
from driftline.services.inference.predictor import FeatureSource, Predictor
from driftline.services.inference.runtime import RuntimeOptions, SessionFactory

log = structlog.get_logger(__name__)

#: How often the control plane checks that its data plane still runs.
DATA_PLANE_WATCH_S = 0.5


class InferenceApp:
    """The inference server: gRPC (v1 + KServe v2), models kept in step with the registry,
    predictions logged to Kafka. ``start`` binds and returns the port; ``stop`` drains."""

    def __init__(
        self,
        settings: Settings,
        *,
        features: FeatureSource,
        source: ModelSource,
        producer: KafkaProducer,
        default_feature_names: tuple[str, ...] = (),
        predictions_topic: Topic = PREDICTIONS,
        model_events_topic: Topic = MODEL_EVENTS,
        session_factory: SessionFactory | None = None,
        data_plane: DataPlane | None = None,
    ) -> None:
        self.settings = settings
        self._features = features
        self._source = source
        self._producer = producer
        self._default_features = default_feature_names
        self._model_events_topic = model_events_topic
        #: The compiled data plane (``settings.data_plane``): when given, it serves both APIs and
        #: this process is its control plane; its gRPC server is not started.
        self.data_plane = data_plane
        self.sessions = session_factory or SessionFactory(
            RuntimeOptions(device=settings.device, intra_op_threads=settings.intra_op_threads)
        )
        self.slots = ModelSlots(
            model_name=settings.model_name,
            batching=BatchingOptions(
                max_batch_size=settings.max_batch_size,
                max_queue_delay_us=settings.max_queue_delay_us,
                queue_capacity=settings.queue_capacity,
                concurrency=settings.batch_concurrency,
            ),
            routing=RoutingOptions(shadow=settings.shadow, canary_share=settings.canary_share),
            on_change=self._models_changed,
        )
        self.prediction_log = PredictionLogger(
            producer.raw,
            predictions_topic,
            capacity=settings.prediction_log_capacity,
            flush_interval_s=settings.prediction_log_linger_ms / 1000,
        )
        self.predictor = Predictor(
            slots=self.slots,
            features=features,
            sink=self.prediction_log,
            policy=settings.staleness_policy,
            threshold=settings.decision_threshold,
            max_entities=settings.max_entities_per_call,
            outages=OutagePolicy(errors=REDIS_OUTAGE),
        )
        self.server = GrpcServer(settings.grpc, service_names=[servicer.SERVICE_NAME, kserve.SERVICE_NAME])
        self.server.add(
            inference_pb2_grpc.add_InferenceServiceServicer_to_server,
            servicer.InferenceServicer(self.predictor, default_deadline_s=settings.grpc.default_deadline_s),
        )
        self.server.add(
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            kserve.KServeServicer(self.slots, default_deadline_s=settings.grpc.default_deadline_s),
        )
        self._aliases = {settings.alias: Role.CHAMPION}
        if settings.shadow or settings.canary_share > 0:
            self._aliases[settings.challenger_alias] = Role.CHALLENGER
        # Loads are slow and blocking (download, session, warm-up): never on the event loop.
        self._loads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self.loader: ModelLoader | None = None
        self.listener: ModelEventsListener | None = None
        self._startup: asyncio.Task[None] | None = None
        self._mirror: DataPlaneMirror | None = None
        self._watch: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopped = False
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        metrics.DATA_PLANE.set(1 if self.data_plane is not None else 0)
        if self.data_plane is not None:
            await loop.run_in_executor(self._loads, self.data_plane.start)
            self._mirror = DataPlaneMirror(self.data_plane)
            self._watch = loop.create_task(self._watch_data_plane())
        self.loader = ModelLoader(
            source=self._source,
            load_runtime=self.sessions.load,
            slots=self.slots,
            loop=loop,
            aliases=self._aliases,
            default_feature_names=self._default_features,
            warm_up=WarmUp(tuple(self.settings.warmup_batch_sizes), self.settings.warmup_runs),
            mirror=self._mirror,
        )
        if self.data_plane is None:
            self.port = await self.server.start()  # health NOT_SERVING until a champion is warm
            self.prediction_log.start()
        else:
            self.port = self.data_plane.port  # its health: NOT_SERVING until a champion is warm
        self.listener = ModelEventsListener(
            self.settings.kafka,
            self._model_events_topic,
            self.loader.apply,
            group_prefix=self.settings.model_events_group_prefix,
        )
        self.listener.start()
        self._startup = loop.create_task(self._load_initial_models())
        return self.port

    async def _watch_data_plane(self) -> None:
        """Start the data plane again whenever it exits on its own, and reload its models: until
        then clients get UNAVAILABLE, as from any server that is down."""
        assert self.data_plane is not None
        assert self._mirror is not None
        loop = asyncio.get_running_loop()
        while not self._stopped:
            await asyncio.sleep(DATA_PLANE_WATCH_S)
            code = self.data_plane.exit_code()
            if code is None or self._stopped:
                continue
            metrics.DATA_PLANE_RESTARTS.inc()
            log.error("data_plane_exited", exit_code=code)
            try:
                await loop.run_in_executor(None, self.data_plane.restart)
                versions = await loop.run_in_executor(None, self._mirror.replay)
            except Exception as err:  # noqa: BLE001 - tried again on the next round
                log.error("data_plane_restart_failed", error=str(err))
                continue
            log.info("data_plane_restarted", port=self.data_plane.port, versions=versions)

    async def _load_initial_models(self) -> None:
        """Resolve the aliases once events can no longer be missed; retry the champion until live."""
        assert self.loader is not None
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._loads, self.listener.wait_assigned, 30.0):
            log.warning("model_events_not_assigned", topic=self._model_events_topic.name)
        for alias, role in self._aliases.items():
            while self.slots.serving(role) is None:
                if await loop.run_in_executor(self._loads, self.loader.load_alias, alias):
                    break
                if role is not Role.CHAMPION:
                    break  # a missing challenger is not an outage; its alias event will load it
                await asyncio.sleep(self.settings.startup_retry_s)

    async def _models_changed(self) -> None:
        ready = self.slots.ready
        if ready and not self._ready.is_set():
            self._settle_heap()  # before SERVING: its one full collection holds up no request
        if self.data_plane is None:
            await self.server.set_serving(ready)
        metrics.SERVING.set(1 if ready else 0)
        if ready:
            provider = self.sessions.provider
            if provider is not None and not self._ready.is_set():
                metrics.EXECUTION_PROVIDER.labels(provider).set(1)
                log.info("execution_provider", provider=provider)
            self._ready.set()

    def _settle_heap(self) -> None:
        """Keep the garbage collector off the request path once everything long-lived exists.

        A full collection walks every object of the process (~100k after imports and the first
        model) and held the event loop for 50-90 ms, a few times a minute under load; frozen,
        those objects are never walked again. A higher young-generation threshold means fewer
        collections: a request's objects die by reference counting, not by the collector.
        """
        tune_gc(self.settings.gc_young_threshold, freeze=self.settings.gc_freeze)

    async def wait_ready(self, timeout_s: float) -> None:
        """Until a champion is live (tests and benchmarks)."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def stop(self) -> None:
        """SIGTERM: NOT_SERVING, let in-flight calls finish, then close models and flush the log."""
        if self._stopped:
            return
        self._stopped = True
        if self._startup is not None:
            self._startup.cancel()
        if self._watch is not None:
            self._watch.cancel()
        if self.listener is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.listener.stop)
        if self.data_plane is None:
            await self.server.stop()
        else:  # SIGTERM: it drains its calls and flushes its log
            await asyncio.get_running_loop().run_in_executor(None, self.data_plane.stop)
        await self.predictor.drain()
        await self.slots.close()
        self._loads.shutdown(wait=False, cancel_futures=True)
        if self.data_plane is None:
            await asyncio.get_running_loop().run_in_executor(None, self.prediction_log.close)
        await asyncio.get_running_loop().run_in_executor(None, self._close_producer)
        log.info("inference_stopped")

    def _close_producer(self) -> None:
        try:
            self._producer.close(5.0)
        except Exception as err:  # noqa: BLE001 - counted per record already; nothing left to do
            log.warning("producer_close_incomplete", error=str(err))


def prediction_log_producer(settings: Settings) -> KafkaProducer:
    """The producer for prediction logs: nothing waits on them, so they linger longer than the kit's
    default and travel in fewer, bigger batches (less CPU per record in librdkafka)."""
    return KafkaProducer(settings.kafka, config={"linger.ms": settings.prediction_log_linger_ms})


async def serve(settings: Settings) -> None:
    """Build the production dependencies, run until SIGTERM, drain."""
    from driftline.featurestore import AsyncOnlineStore, feature_set_by_key
    from driftline.kit.metrics import serve_metrics
    from driftline.kit.registry_client import RegistryClient
    from driftline.services.inference.registry_source import RegistryModelSource

    feature_set = feature_set_by_key(settings.feature_set)
    store = AsyncOnlineStore.from_settings(
        settings.redis, feature_set, key_prefix=settings.online_store_key_prefix
    )
    producer = prediction_log_producer(settings)
    client = RegistryClient(
        settings.registry_address, settings.registry_token or None, tls=settings.registry_tls
    )
    source = RegistryModelSource(client, asyncio.get_running_loop())
    serve_metrics(settings.metrics_port, settings.metrics, service="inference")
    data_plane = None
    workdir = None
    if settings.data_plane:
        workdir = Path(tempfile.mkdtemp(prefix="driftline-dataplane-"))
        data_plane = DataPlane(
            settings,
            feature_set=feature_set,
            predictions=PREDICTIONS,
            workdir=workdir,
            listen=f"{settings.grpc.host}:{settings.grpc.port}",
            metrics_listen=f"{settings.metrics.host}:{settings.data_plane_metrics_port}",
            log_file=False,  # its JSON lines join the service's
        )
    app = InferenceApp(
        settings,
        features=store,
        source=source,
        producer=producer,
        default_feature_names=tuple(feature_set.feature_names),
        data_plane=data_plane,
    )
    try:
        await app.start()
        await wait_for_signal()
    finally:
        await app.stop()
        await store.close()
        await source.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
