"""Every Kafka topic Driftline uses, declared once.

Code refers to topics through these objects (``TRANSACTIONS_CLEAN.name``), never by typing the
name. ``docs/architecture.md`` lists the same table; ``tests/contract`` keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from driftline.drift.v1 import drift_pb2
from driftline.events.v1 import transaction_pb2
from driftline.features.v1 import features_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.inference.v1 import inference_pb2
from driftline.registry.v1 import registry_pb2
from driftline.trainer.v1 import trainer_pb2

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

    from driftline.kit.settings import KafkaSettings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    """One topic: its name, what keys and values mean, and how the broker keeps it."""

    name: str
    key: str
    #: Protobuf message type of the value; None for raw bytes (JSON producers, dead letters).
    message: type[Message] | None
    partitions: int = 3
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False
    #: Where messages that cannot be processed go; None for none.
    dead_letter: Topic | None = None
    description: str = ""
    extra_config: dict[str, str] = field(default_factory=dict)

    def broker_config(self) -> dict[str, str]:
        """Topic-level configuration to create it with."""
        config = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
        }
        config.update(self.extra_config)
        return config

    def dead_letter_topic(self) -> Topic:
        """The dead-letter topic declared for this one."""
        if self.dead_letter is None:
            raise LookupError(f"topic {self.name} declares no dead-letter topic")
        return self.dead_letter

    def namespaced(self, prefix: str) -> Topic:
        """A copy whose name (and dead-letter topic's name) starts with ``prefix``.

        Tests use it to get topics of their own on a shared broker.
        """
        return replace(
            self,
            name=f"{prefix}{self.name}",
            dead_letter=self.dead_letter.namespaced(prefix) if self.dead_letter else None,
        )

    def with_dead_letter(self) -> list[Topic]:
        """This topic and, when it has one, its dead-letter topic."""
        return [self] if self.dead_letter is None else [self, self.dead_letter]


def _dead_letter(name: str, source: str) -> Topic:
    return Topic(
        name=name,
        key="the source message's key",
        message=None,
        partitions=1,
        retention_ms=30 * DAY_MS,
        description=(
            f"Messages of {source} that could not be processed: original value bytes, "
            "with reason and source coordinates in dlq.* headers."
        ),
    )


TRANSACTIONS_RAW_DLQ = _dead_letter("transactions.raw-dlq.v1", "transactions.raw.v1")
TRANSACTIONS_RAW = Topic(
    name="transactions.raw.v1",
    key="card_id (any key accepted)",
    message=None,
    dead_letter=TRANSACTIONS_RAW_DLQ,
    description=(
        "Raw card transactions from producers: JSON (content-type application/json, the default) "
        "or driftline.events.v1.RawTransaction (content-type application/x-protobuf)."
    ),
)

TRANSACTIONS_CLEAN_DLQ = _dead_letter("transactions.clean-dlq.v1", "transactions.clean.v1")
TRANSACTIONS_CLEAN = Topic(
    name="transactions.clean.v1",
    key="card_id",
    message=transaction_pb2.CleanTransaction,
    dead_letter=TRANSACTIONS_CLEAN_DLQ,
    description="Validated, normalised, de-duplicated transactions.",
)

FEATURE_VECTORS = Topic(
    name="features.vectors.v1",
    key="entity_id",
    message=features_pb2.FeatureVector,
    description="Per-entity feature vectors, one after every clean event.",
)

PREDICTIONS = Topic(
    name="inference.predictions.v1",
    key="entity_id",
    message=inference_pb2.PredictionLog,
    description="Every prediction served, shadow and canary ones included.",
)

FEEDBACK_DLQ = _dead_letter("feedback.labels-dlq.v1", "feedback.labels.v1")
FEEDBACK = Topic(
    name="feedback.labels.v1",
    key="prediction_id, or entity_id",
    message=feedback_pb2.FeedbackLabel,
    dead_letter=FEEDBACK_DLQ,
    description="Delayed ground-truth labels, joined to predictions by the drift service.",
)

DRIFT_REPORTS = Topic(
    name="drift.reports.v1",
    key="model_name",
    message=drift_pb2.DriftReport,
    partitions=1,
    retention_ms=30 * DAY_MS,
    description="Drift detectors' verdicts on feature and prediction windows.",
)

PERFORMANCE_DEGRADATIONS = Topic(
    name="drift.degradations.v1",
    key="model_name",
    message=drift_pb2.PerformanceDegradation,
    partitions=1,
    retention_ms=30 * DAY_MS,
    description="Live accuracy, from joined feedback, fell below its threshold.",
)

MODEL_EVENTS = Topic(
    name="registry.model-events.v1",
    key="model_name",
    message=registry_pb2.ModelEvent,
    partitions=1,
    retention_ms=365 * DAY_MS,
    description="Every registry change, published through the registry's outbox.",
)

RETRAIN_REQUESTS = Topic(
    name="trainer.retrain-requests.v1",
    key="model_name",
    message=trainer_pb2.RetrainRequest,
    partitions=1,
    retention_ms=30 * DAY_MS,
    description="Manual or automatic requests for a retrain.",
)

ALL_TOPICS: tuple[Topic, ...] = (
    TRANSACTIONS_RAW,
    TRANSACTIONS_RAW_DLQ,
    TRANSACTIONS_CLEAN,
    TRANSACTIONS_CLEAN_DLQ,
    FEATURE_VECTORS,
    PREDICTIONS,
    FEEDBACK,
    FEEDBACK_DLQ,
    DRIFT_REPORTS,
    PERFORMANCE_DEGRADATIONS,
    MODEL_EVENTS,
    RETRAIN_REQUESTS,
)

_BY_NAME = {topic.name: topic for topic in ALL_TOPICS}


def by_name(name: str) -> Topic:
    """The declared topic with this name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise LookupError(f"undeclared topic {name!r}") from None


class TopicMismatch(RuntimeError):
    """A declared topic exists on the broker with another partition count."""


def ensure_topics(settings: KafkaSettings, topics: Iterable[Topic] = ALL_TOPICS) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Safe to repeat.

    A declared topic that exists with another partition count raises ``TopicMismatch``: keys
    would land on other partitions than the services assume (the features service's state is
    partitioned like its source), and Kafka cannot take partitions away. Other settings
    (retention, say) may be tuned on the broker on purpose and are left as they are.
    """
    from driftline.kit.kafka import admin_client  # kafka imports this module

    topics = list(topics)
    admin = admin_client(settings)
    try:
        return _ensure_topics(admin, topics)
    finally:
        admin.poll(0)  # hand its log lines over


def _ensure_topics(admin: AdminClient, topics: list[Topic]) -> list[str]:
    from confluent_kafka.admin import NewTopic

    existing = admin.list_topics(timeout=15).topics
    mismatched = [
        f"{t.name} has {len(existing[t.name].partitions)} partitions, declared {t.partitions}"
        for t in topics
        if t.name in existing and len(existing[t.name].partitions) != t.partitions
    ]
    if mismatched:
        raise TopicMismatch(
            "topics differ from their declaration in driftline.kit.topics: "
            + "; ".join(mismatched)
            + " (recreate them, or raise the declaration to match)"
        )
    wanted = [t for t in topics if t.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [
            NewTopic(t.name, num_partitions=t.partitions, replication_factor=1, config=t.broker_config())
            for t in wanted
        ],
        operation_timeout=30,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except Exception as err:
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                raise
    return sorted(created)
