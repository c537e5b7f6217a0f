"""Wiring: the one place the registry's objects are constructed and connected."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog

from driftline.kit.codec import utcnow
from driftline.kit.grpc import GrpcServer, wait_for_signal
from driftline.kit.kafka import KafkaProducer
from driftline.kit.metrics import serve_metrics
from driftline.kit.topics import MODEL_EVENTS, Topic
from driftline.registry.v1 import registry_pb2 as pb
from driftline.registry.v1 import registry_pb2_grpc as pb_grpc
from driftline.services.registry.artifacts import ArtifactStore, FilesystemArtifactStore
from driftline.services.registry.audit import AuditLog
from driftline.services.registry.config import Settings
from driftline.services.registry.convert import encode_event
from driftline.services.registry.core import Registry
from driftline.services.registry.outbox import EventPublisher, Outbox, OutboxRelay
from driftline.services.registry.security import OnnxValidator, TokenAuthenticator
from driftline.services.registry.servicer import RegistryServicer
from driftline.services.registry.store import Database

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name


class RegistryApp:
    """The registry process: gRPC server, outbox relay and /metrics around one ``Registry`` core.

    Tests construct it with their own settings, topic and (for unit tests) publisher.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topic: Topic | None = None,
        publisher: EventPublisher | None = None,
        artifacts: ArtifactStore | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.topic = topic or (
            MODEL_EVENTS.namespaced(settings.events_topic_prefix)
            if settings.events_topic_prefix
            else MODEL_EVENTS
        )
        self.database = Database(settings.resolved_database_url(), schema_name=settings.database_schema)
        self.artifacts = artifacts or FilesystemArtifactStore(settings.resolved_artifact_dir())
        self.outbox = Outbox(self.database)
        self._publisher = publisher
        self._producer: KafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        audit_key = settings.audit_key.get_secret_value().encode() if settings.audit_key else None
        self.registry = Registry(
            self.database,
            self.artifacts,
            OnnxValidator(settings.max_artifact_bytes),
            AuditLog(audit_key),
            clock=clock,
            on_change=self._notify_relay,
            lock_breakers=settings.lock_breakers,
        )
        self.servicer = RegistryServicer(
            self.registry,
            TokenAuthenticator(settings.write_tokens()),
            require_token_for_reads=settings.require_token_for_reads,
        )
        self.server: GrpcServer | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._collector_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.port = 0

    def _notify_relay(self) -> None:
        if self.relay is not None:
            self.relay.notify()

    async def start(self) -> int:
        """Create the schema, start serving; health turns SERVING once the database answers."""
        await asyncio.to_thread(self.database.create_schema)
        await asyncio.to_thread(self.database.ping)
        if not self.settings.write_tokens():
            log.warning("registry_read_only", reason="no DRIFTLINE_REGISTRY_TOKEN(S) configured")
        if self.settings.metrics.enabled:
            serve_metrics(self.settings.metrics_port, self.settings.metrics, service="registry")
        self.server = GrpcServer(self.settings, service_names=[SERVICE_NAME])
        self.server.add(pb_grpc.add_RegistryServiceServicer_to_server, self.servicer)
        self.port = await self.server.start()
        if self.settings.outbox_enabled:
            publisher = self._publisher
            if publisher is None:
                self._producer = KafkaProducer(self.settings.kafka)
                publisher = self._producer
            self.relay = OutboxRelay(
                self.outbox,
                publisher,
                self.topic,
                encode_event,
                poll_interval_s=self.settings.outbox_poll_interval_s,
                batch_size=self.settings.outbox_batch_size,
                lease_s=self.settings.outbox_lease_s,
                clock=self._clock,
            )
            self._relay_task = asyncio.create_task(self.relay.run(), name="outbox-relay")
        if self.settings.artifact_gc_interval_s > 0:
            self._collector_task = asyncio.create_task(self._collect_artifacts(), name="artifact-collector")
        await self.server.set_serving(True)
        log.info(
            "registry_ready",
            port=self.port,
            database=self.database.dialect,
            artifacts=str(self.settings.resolved_artifact_dir()),
            topic=self.topic.name,
        )
        return self.port

    async def _collect_artifacts(self) -> None:
        """Every ``artifact_gc_interval_s``, remove the artifacts no live version uses."""
        interval, grace = self.settings.artifact_gc_interval_s, self.settings.artifact_gc_grace_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
                return
            try:
                removed, freed = await asyncio.to_thread(self.registry.collect_artifacts, grace)
            except Exception as err:  # noqa: BLE001 - the next round tries again; serving goes on
                log.warning("artifact_collection_failed", error=f"{type(err).__name__}: {err}")
                continue
            if removed:
                log.info("artifacts_collected", artifacts=removed, bytes=freed)

    async def stop(self) -> None:
        """Drain in-flight calls, stop the relay (pending events stay in the outbox), close."""
        self._stopping.set()
        if self.server is not None:
            await self.server.stop()
        if self._collector_task is not None:
            await self._collector_task  # a collection under way finishes: it leaves no file half-moved
        if self.relay is not None and self._relay_task is not None:
            self.relay.stop()
            try:
                await asyncio.wait_for(self._relay_task, timeout=self.settings.drain_s)
            except TimeoutError:
                self._relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._relay_task
        if self._producer is not None:
            try:
                await asyncio.to_thread(self._producer.close, 5.0)
            except Exception as err:  # noqa: BLE001 - undelivered events are still pending in the outbox
                log.warning("producer_close_incomplete", error=str(err))
        self.database.dispose()

    async def serve(self) -> None:
        await self.start()
        await wait_for_signal()
        await self.stop()
