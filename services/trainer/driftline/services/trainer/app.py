"""Wiring: the one place the trainer's objects are constructed and connected.

The service runs two consumer loops and one worker:

* the trigger loop reads drift reports, degradations and retrain requests and hands triggers to
  the scheduler (debounced, journaled);
* the label loop appends feedback labels to the label log;
* the scheduler's worker thread runs one retrain at a time through ``RetrainRunner``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

import structlog

from driftline.featurestore.definitions import TRANSACTION_FEATURES, FeatureSet
from driftline.featurestore.offline import OfflineStore
from driftline.kit.codec import to_timestamp, utcnow
from driftline.kit.kafka import ConsumerLoop, KafkaProducer, install_signal_handlers
from driftline.kit.metrics import serve_metrics
from driftline.kit.topics import FEEDBACK, RETRAIN_REQUESTS, Topic
from driftline.services.trainer import metrics
from driftline.services.trainer.config import Settings
from driftline.services.trainer.consumer import LabelHandler, TriggerHandler, TriggerTopics
from driftline.services.trainer.dataset import DatasetBuilder
from driftline.services.trainer.features import OfflineFeatureSource
from driftline.services.trainer.labels import LabelLog
from driftline.services.trainer.registry import Registry, SyncRegistry
from driftline.services.trainer.revision import code_revision
from driftline.services.trainer.runner import RetrainRunner, RunResult
from driftline.services.trainer.triggers import (
    MANUAL,
    Debouncer,
    RetrainScheduler,
    TriggerBatch,
    TriggerJournal,
)
from driftline.trainer.v1 import trainer_pb2

log = structlog.get_logger(__name__)


class TrainerCore:
    """The transport-free objects: label log, offline store, dataset builder, runner.

    ``driftline train`` uses this alone; the service adds the consumers and the scheduler.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        feature_set: FeatureSet = TRANSACTION_FEATURES,
    ) -> None:
        self.settings = settings
        self._owns_registry = registry is None
        self.registry: Registry = registry or SyncRegistry(
            settings.registry_address, settings.registry_token, tls=settings.registry_tls
        )
        self.labels = LabelLog(settings.labels_dir)
        self.store = OfflineStore(settings.offline_store_dir, feature_set)
        self.dataset = DatasetBuilder(
            self.labels,
            OfflineFeatureSource(self.store),
            horizon=settings.horizon,
            min_rows=settings.min_rows,
        )
        self.runner = RetrainRunner(
            settings.runner_config(code_revision(settings.code_revision)), self.dataset, self.registry
        )

    def close(self) -> None:
        if self._owns_registry and isinstance(self.registry, SyncRegistry):
            self.registry.close()


class TrainerApp:
    """The trainer process. Tests pass namespaced topics, their own registry and a short debounce."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry | None = None,
        trigger_topics: TriggerTopics | None = None,
        feedback_topic: Topic = FEEDBACK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.core = TrainerCore(settings, registry=registry)
        self.results: deque[RunResult] = deque(maxlen=100)
        self._listeners: list[Callable[[RunResult], None]] = []
        self.scheduler = RetrainScheduler(
            Debouncer(
                window_s=settings.debounce_s,
                retry_s=settings.defer_retry_s,
                max_defer_s=settings.max_defer_s,
            ),
            self._run_batch,
            journal=TriggerJournal(settings.journal_path),
            clock=clock,
            on_offer=metrics.observe_offer,
        )
        self.producer = KafkaProducer(settings.kafka)
        topics = trigger_topics or TriggerTopics()
        self.trigger_loop = ConsumerLoop(
            settings.kafka,
            group_id=settings.consumer_group,
            topics=topics.all(),
            handler=TriggerHandler(
                settings.model_name,
                self.scheduler.submit,
                champion=self.core.runner.champion_version,
                topics=topics,
                clock=clock,
            ),
            producer=self.producer,
            service="trainer",
        )
        self.label_loop = ConsumerLoop(
            settings.kafka,
            group_id=settings.labels_group,
            topics=[feedback_topic],
            handler=LabelHandler(self.core.labels),
            producer=self.producer,
            service="trainer",
        )
        self._threads: list[threading.Thread] = []

    @property
    def runner(self) -> RetrainRunner:
        return self.core.runner

    def on_result(self, listener: Callable[[RunResult], None]) -> None:
        """Call ``listener`` after every retrain (benchmarks and tests watch runs with it)."""
        self._listeners.append(listener)

    def _run_batch(self, batch: TriggerBatch) -> RunResult:
        result = self.core.runner.run(batch)
        metrics.observe_run(self.settings.model_name, result)
        self.results.append(result)
        for listener in self._listeners:
            listener(result)
        return result

    def start(self) -> None:
        """Start the scheduler and both consumer loops on background threads."""
        self.scheduler.start()
        for name, loop in (("trainer-labels", self.label_loop), ("trainer-triggers", self.trigger_loop)):
            thread = threading.Thread(target=loop.run, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("trainer_started", model=self.settings.model_name, debounce_s=self.settings.debounce_s)

    def stop(self) -> None:
        """Stop consuming, let the retrain in flight finish, and close."""
        self.trigger_loop.stop()
        self.label_loop.stop()
        for thread in self._threads:
            thread.join(30)
        self.scheduler.stop()
        self.producer.close(10)
        self.core.close()
        log.info("trainer_stopped")

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (``python -m driftline.services.trainer``)."""
        serve_metrics(self.settings.metrics_port, self.settings.metrics, service="trainer")
        stopping = threading.Event()
        install_signal_handlers(stopping.set)
        self.start()
        while not stopping.wait(1.0):
            if not all(t.is_alive() for t in self._threads):
                log.error("consumer_loop_died")
                break
        self.stop()


def request_retrain(
    producer: KafkaProducer,
    model_name: str,
    *,
    requested_by: str,
    topic: Topic = RETRAIN_REQUESTS,
    trigger: str = MANUAL,
    cause_id: str = "",
) -> str:
    """Publish a RetrainRequest and wait for the broker's acknowledgement; returns its id."""
    request_id = f"req-{uuid.uuid4().hex}"
    request = trainer_pb2.RetrainRequest(
        request_id=request_id,
        model_name=model_name,
        trigger=trigger,
        cause_id=cause_id,
        requested_by=requested_by,
        requested_at=to_timestamp(utcnow()),
    )
    producer.send(topic, request.SerializeToString(), key=model_name).result(timeout=30)
    return request_id
