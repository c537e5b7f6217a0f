"""Wiring: the one place the ingestion service's objects are built and connected."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from confluent_kafka import Message
from prometheus_client import REGISTRY, CollectorRegistry

from driftline.kit.codec import utcnow
from driftline.kit.kafka import ConsumerHooks, ConsumerLoop, KafkaProducer, install_signal_handlers
from driftline.kit.metrics import serve_metrics
from driftline.kit.outages import OutagePolicy
from driftline.kit.redis_clients import REDIS_OUTAGE, redis_client
from driftline.kit.runtime import tune_gc
from driftline.kit.topics import TRANSACTIONS_CLEAN, TRANSACTIONS_RAW, Topic
from driftline.services.ingestion.config import Settings
from driftline.services.ingestion.consumer import IngestionHandler
from driftline.services.ingestion.contract import Contract
from driftline.services.ingestion.dedup import RedisDeduplicator
from driftline.services.ingestion.gate import Gate
from driftline.services.ingestion.metrics import IngestionMetrics
from driftline.services.ingestion.native import compile_batch_gate
from driftline.services.ingestion.quality import QualityWindow

log = structlog.get_logger(__name__)

SERVICE = "ingestion"


class IngestionApp:
    """Raw transactions in, clean transactions and dead letters out.

    Topics come in by injection, so tests run the real thing on ``Topic.namespaced`` copies.
    ``before_commit`` is a test seam: it runs after the batch is booked, before the commit
    (raise from it to simulate a crash between delivery and commit).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        raw_topic: Topic = TRANSACTIONS_RAW,
        clean_topic: Topic = TRANSACTIONS_CLEAN,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], datetime] = utcnow,
        before_commit: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.contract = Contract.load(settings.contract_path)
        self.metrics = IngestionMetrics(registry)
        self.quality = QualityWindow(self.contract.field_names, window=settings.quality_window)
        self.redis = redis_client(settings.redis)
        self.handler = IngestionHandler(
            Gate(self.contract, self.quality),
            RedisDeduplicator(self.redis, ttl_s=settings.dedup_ttl_s, key_prefix=settings.dedup_key_prefix),
            clean_topic,
            self.metrics,
            batch_gate=compile_batch_gate(self.contract) if settings.native_gate else None,
            clock=clock,
        )
        self._before_commit = before_commit
        # The loop's alone: it reports failed deliveries only, and the loop completes its batches
        # once nothing is outstanding (a Python callback per acknowledged message costs more).
        self.producer = KafkaProducer(settings.kafka, reports="errors")
        self.loop = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=[raw_topic],
            handler=self.handler,
            producer=self.producer,
            service=SERVICE,
            hooks=ConsumerHooks(before_commit=self._delivered),
            # Redis down: the batch waits, rather than valid events going to the dead letters.
            outages=OutagePolicy(errors=REDIS_OUTAGE),
        )

    def _delivered(self, batch: Sequence[Message]) -> None:
        self.handler.on_delivered(batch)
        if self._before_commit is not None:
            self._before_commit(batch)

    def serve_metrics(self) -> int:
        """Start /metrics; returns the bound port."""
        return serve_metrics(self.settings.metrics_port, self.settings.metrics, service=SERVICE)

    def run(self) -> None:
        """Consume until ``stop()``; then release the producer and Redis."""
        log.info("ingestion_started", contract=f"{self.contract.name}.v{self.contract.version}")
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        self.producer.close()
        self.redis.close()


def serve(settings: Settings) -> None:
    """Run the service until SIGTERM or SIGINT."""
    raw, clean = TRANSACTIONS_RAW, TRANSACTIONS_CLEAN
    if settings.topic_prefix:
        raw, clean = raw.namespaced(settings.topic_prefix), clean.namespaced(settings.topic_prefix)
    app = IngestionApp(settings, raw_topic=raw, clean_topic=clean)
    app.serve_metrics()
    install_signal_handlers(app.stop)
    tune_gc()
    app.run()
