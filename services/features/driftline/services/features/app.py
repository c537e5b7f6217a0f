"""The one place the features service is constructed and wired.

``FeaturesApp(settings)`` builds the faust app, its topics (declared with the partitions the
topic declarations give, ``internal=False``: ``driftline topics create`` makes them, faust never
does), the kit producer the outputs go through, the stores and the agents. Nothing is read or
written until the worker starts.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from typing import Any

import faust
import faust.auth
import mode.loop
import structlog

from driftline.featurestore.definitions import FeatureSet, feature_set_by_key
from driftline.featurestore.offline import OfflineStore
from driftline.featurestore.online import AsyncOnlineStore
from driftline.kit.kafka import KafkaProducer
from driftline.kit.lag import GroupLag, LagReporter
from driftline.kit.metrics import serve_metrics
from driftline.kit.redis_clients import async_redis_client
from driftline.kit.runtime import tune_gc
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import FEATURE_VECTORS, Topic
from driftline.services.features.agents import KafkaPublisher, TransactionsAgent, VectorsSinkAgent
from driftline.services.features.config import Settings
from driftline.services.features.processor import FeatureProcessor
from driftline.services.features.sink import OfflineSink
from driftline.services.features.state import RedisState

log = structlog.get_logger(__name__)


def faust_app(settings: Settings) -> faust.App:
    """The faust app with Driftline's conventions: raw bytes, no topic creation, no leader topic."""
    brokers = [f"kafka://{server.strip()}" for server in settings.kafka.bootstrap_servers.split(",")]
    return faust.App(
        settings.app_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings.kafka),
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(settings.data_dir / settings.app_id),
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger=0.005,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )


def broker_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """The connection's TLS and SASL settings in faust's (aiokafka's) terms: the same brokers,
    CA, client certificate and login as the service's librdkafka clients."""
    context = _ssl_context(kafka) if kafka.uses_ssl else None
    if kafka.uses_sasl and kafka.sasl_password is not None:
        return faust.auth.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    return faust.auth.SSLCredentials(context) if context is not None else None


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """Verifies the brokers' certificates and host names, as librdkafka does by default."""
    context = ssl.create_default_context(cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None)
    if kafka.ssl_cert_file is not None and kafka.ssl_key_file is not None:
        context.load_cert_chain(str(kafka.ssl_cert_file), str(kafka.ssl_key_file))
    return context


def faust_topic(app: faust.App, topic: Topic) -> Any:
    """A faust topic of a declared topic, with its partitions; faust never creates it."""
    return app.topic(
        topic.name,
        partitions=topic.partitions,
        internal=False,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


class FeaturesApp:
    def __init__(self, settings: Settings, *, feature_set: FeatureSet | None = None) -> None:
        self.settings = settings
        self.feature_set = feature_set or feature_set_by_key(settings.feature_set)
        if self.feature_set.source.dead_letter is None:
            raise ValueError(f"source topic {self.feature_set.source.name} declares no dead-letter topic")
        prefix = settings.topic_prefix
        self.source = self.feature_set.source.namespaced(prefix) if prefix else self.feature_set.source
        self.vectors_topic = FEATURE_VECTORS.namespaced(prefix) if prefix else FEATURE_VECTORS

        self.faust = faust_app(settings)
        self.redis = async_redis_client(settings.redis)
        self.online = AsyncOnlineStore(
            self.redis, self.feature_set, key_prefix=settings.key_prefix, key_ttl_s=settings.key_ttl_s
        )
        self.state = RedisState(
            self.redis,
            self.online,
            self.feature_set,
            key_prefix=settings.key_prefix,
            key_ttl_s=settings.key_ttl_s,
        )
        self.processor = FeatureProcessor(
            self.feature_set, self.state, allowed_lateness_s=settings.allowed_lateness_s
        )
        source = faust_topic(self.faust, self.source)
        vectors = faust_topic(self.faust, self.vectors_topic)
        self.producer = KafkaProducer(settings.kafka)
        self.transactions = TransactionsAgent(
            self.processor,
            KafkaPublisher(self.producer, timeout_s=settings.kafka.delivery_timeout_ms / 1000),
            vectors_topic=self.vectors_topic.name,
            dead_letter_topic=self.source.dead_letter_topic().name,
            source_name=self.source.name,
            batch_max=settings.batch_max,
            batch_within_s=settings.batch_within_s,
            max_retries=settings.max_retries,
            retry_backoff_s=settings.retry_backoff_s,
            group=settings.app_id,
            on_failure=self._stop,
        )
        self.faust.agent(source, name="features.transactions")(self.transactions)
        self.offline: OfflineStore | None = None
        if settings.offline_enabled:
            self.offline = OfflineStore(settings.offline_root, self.feature_set)
            removed = self.offline.remove_stale_temporaries()
            if removed:
                log.warning("offline_store_unfinished_writes_removed", files=len(removed))
            self.sink = OfflineSink(self.offline, max_pending=settings.offline_max_pending)
            self.sink_agent = VectorsSinkAgent(
                self.sink, batch_max=settings.offline_batch_max, flush_s=settings.offline_flush_s
            )
            self.faust.agent(vectors, name="features.offline-sink")(self.sink_agent)
        # faust's consumer reports no lag: it is read from the broker, for DriftlineConsumerLagHigh,
        # on every topic the app id consumes (the transactions, and the vectors the sink reads).
        consumed = [self.source.name] + ([self.vectors_topic.name] if self.offline is not None else [])
        self.lag = LagReporter(
            GroupLag(settings.kafka, settings.app_id, consumed), interval_s=settings.lag_interval_s
        )
        self.faust.on_before_shutdown.connect(self._on_shutdown)
        self.faust.on_partitions_revoked.connect(self._on_rebalance)
        self.faust.on_partitions_assigned.connect(self._on_rebalance)

    async def _on_rebalance(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Another worker may have owned some of our entities meanwhile: reload state from Redis.
        self.processor.invalidate()

    async def _on_shutdown(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(self.lag.stop)
        if self.offline is not None:
            # Rows still pending after failed writes get one last try; un-acked events replay anyway.
            self.sink.flush()
        await self.state.close()
        await self.online.close()  # and the Redis client it shares with the state
        self.producer.close()
        log.info("features_stopped", batches=self.transactions.batches)

    def run(self) -> None:
        """Serve /metrics and run the faust worker until SIGTERM/SIGINT (blocking)."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        serve_metrics(self.settings.metrics_port, self.settings.metrics, service="features")
        self.lag.start()
        log.info(
            "features_starting",
            source=self.source.name,
            vectors=self.vectors_topic.name,
            feature_set=self.feature_set.key,
            offline=str(self.settings.offline_root) if self.offline else None,
        )
        if self.settings.event_loop != "asyncio":
            mode.loop.use(self.settings.event_loop)
        worker = faust.Worker(
            self.faust,
            loglevel=self.settings.log.level,
            override_logging=False,
            quiet=True,
        )
        # The start-up spinner writes terminal escapes to stdout, which would break the JSON
        # lines of a log file shared with stderr.
        worker.spinner = None
        if self.settings.gc_young_threshold > 0:
            # Measured on bench/features_pipeline.py: with Python's (700, 10, 10) the worker ran a
            # full collection every ~2 s once the per-card histories held ~200k objects, 100-240 ms
            # each (a tenth of its CPU and the worst freshness outliers); frozen, none ran.
            tune_gc(self.settings.gc_young_threshold)
        worker.execute_from_commandline()

    def _stop(self, failure: BaseException) -> None:
        """Exit at once, with code 1, as a kill would: the failed batch is not acked, so nothing is
        committed past it, and the restart replays it (every effect is idempotent: a SIGKILLed
        worker restarts into exactly the state of an uninterrupted run, tests/integration/features/
        test_restart.py). A graceful stop would wait for faust to see that batch's events acked,
        which they never are."""
        log.error("features_stopped_after_failure", error=f"{type(failure).__name__}: {failure}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
