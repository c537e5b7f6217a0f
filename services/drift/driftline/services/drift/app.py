"""Wiring of the drift service: the one place where its objects are built and connected."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from driftline.kit.kafka import ConsumerLoop, KafkaProducer, install_signal_handlers
from driftline.kit.metrics import serve_metrics
from driftline.services.drift import metrics
from driftline.services.drift.alibi_backend import AlibiDetectorFactory
from driftline.services.drift.config import Settings
from driftline.services.drift.consumer import DriftHandler, DriftTopics
from driftline.services.drift.detectors import DetectorFactory
from driftline.services.drift.feedback import FeedbackJoiner
from driftline.services.drift.monitor import DriftMonitor
from driftline.services.drift.performance import PerformanceTracker
from driftline.services.drift.reference import ReferenceSource, ReferenceWatcher, RegistryReferenceSource

log = structlog.get_logger(__name__)


class DriftApp:
    """The drift service: a consumer loop over its four input topics, and its metrics endpoint."""

    def __init__(
        self,
        settings: Settings,
        *,
        reference_source: ReferenceSource | None = None,
        producer: KafkaProducer | None = None,
        topics: DriftTopics | None = None,
        factory: DetectorFactory | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.topics = topics or DriftTopics()
        self._owns_source = reference_source is None
        self.source: ReferenceSource = reference_source or RegistryReferenceSource(settings.registry)
        self.monitor = DriftMonitor(
            settings.monitor_config(),
            factory or AlibiDetectorFactory(),
            clock=clock,
            on_verdict=metrics.record_verdict,
        )
        self.watcher = ReferenceWatcher(
            self.source,
            self.monitor,
            model_name=settings.model_name,
            alias=settings.alias,
            default_threshold=settings.default_decision_threshold,
            retry_s=settings.reference_retry_s,
            clock=monotonic,
        )
        self.joiner = FeedbackJoiner(
            horizon_s=settings.feedback_horizon_s,
            max_predictions=settings.max_predictions,
            max_labels=settings.max_labels,
            clock=monotonic,
        )
        self.tracker = PerformanceTracker(settings.performance_policy(), clock=clock)
        self.handler = DriftHandler(
            monitor=self.monitor,
            watcher=self.watcher,
            joiner=self.joiner,
            tracker=self.tracker,
            topics=self.topics,
        )
        self.producer = producer or KafkaProducer(settings.kafka)
        self.loop = ConsumerLoop(
            settings.kafka,
            group_id=settings.group_id,
            topics=self.topics.consumed,
            handler=self.handler,
            producer=self.producer,
            service="drift",
            config={"auto.offset.reset": settings.start_at},
        )
        self.metrics_port = 0

    def run(self) -> None:
        """Load the reference, then consume until ``stop()``."""
        self.metrics_port = serve_metrics(self.settings.metrics_port, self.settings.metrics, service="drift")
        reports = self.watcher.ensure_loaded()
        if reports:
            # Reports due at start-up (a reference that cannot be watched) go out before consuming.
            for output in self.handler.startup_outputs(reports):
                self.producer.send(output.topic, output.value, output.key, output.headers)
            self.producer.flush(self.settings.kafka.delivery_timeout_ms / 1000)
        self.loop.run()

    def stop(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        try:
            self.producer.close()
        finally:
            if self._owns_source and isinstance(self.source, RegistryReferenceSource):
                self.source.close()


def run(settings: Settings) -> None:
    """Run the service until SIGTERM or SIGINT."""
    app = DriftApp(settings)
    install_signal_handlers(app.stop)
    try:
        app.run()
    finally:
        app.close()
