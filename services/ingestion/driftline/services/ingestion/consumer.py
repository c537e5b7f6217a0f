"""The Kafka adapter: a ConsumerLoop batch handler around the gate and the de-duplicator.

Per batch: examine every message, claim the valid ones' event ids in one Redis round trip,
then return one outcome per message: the clean event (keyed by card id), a dead letter with
its reason code, or nothing for a duplicate. The accounting is booked in ``on_delivered``, which
the loop calls once the outputs are acknowledged and before it commits, so every consumed
message is counted exactly once as clean, dead-lettered or duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from confluent_kafka import Message

from driftline.kit.codec import utcnow
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, DeadLetter, Outcome, Output, header
from driftline.kit.topics import Topic
from driftline.services.ingestion.dedup import Claim, Deduplicator, source_token
from driftline.services.ingestion.gate import Accepted, Gate, timestamp, to_clean
from driftline.services.ingestion.metrics import IngestionMetrics

log = structlog.get_logger(__name__)

CLEAN = "clean"
DUPLICATE = "duplicate"
#: What the loop dead-letters on its own when the handler keeps failing on a message.
HANDLER_ERROR = "handler_error"

_Coordinates = tuple[str | None, int | None, int | None]
_CLEAN_HEADERS = [(CONTENT_TYPE, PROTOBUF.encode())]


class IngestionHandler:
    """Turns a batch of raw messages into outcomes; books what happened to each."""

    def __init__(
        self,
        gate: Gate,
        dedup: Deduplicator,
        clean_topic: Topic,
        metrics: IngestionMetrics,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._gate = gate
        self._dedup = dedup
        self._clean_topic = clean_topic.name
        self._metrics = metrics
        self._clock = clock
        #: Verdicts of handled messages whose batch is not delivered yet (a retried batch overwrites).
        self._pending: dict[_Coordinates, str] = {}

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        now = self._clock()
        ingested_at = timestamp(now)
        examine = self._gate.examine
        verdicts = [examine(m.value(), header(m, CONTENT_TYPE), now) for m in messages]
        accepted = [(m, v) for m, v in zip(messages, verdicts, strict=True) if isinstance(v, Accepted)]
        fresh = iter(
            self._dedup.claim(
                [Claim(v.event_id, source_token(m.topic(), m.partition(), m.offset())) for m, v in accepted]
            )
        )
        clean_topic = self._clean_topic
        pending = self._pending
        outcomes: list[Outcome] = []
        for message, verdict in zip(messages, verdicts, strict=True):
            coordinates = (message.topic(), message.partition(), message.offset())
            if not isinstance(verdict, Accepted):
                outcomes.append(DeadLetter(verdict.reason.value, verdict.detail))
                pending[coordinates] = verdict.reason.value
            elif next(fresh):
                clean = to_clean(
                    verdict.values,
                    ingested_at=ingested_at,
                    source_topic=coordinates[0],  # type: ignore[arg-type]
                    source_partition=coordinates[1],  # type: ignore[arg-type]
                    source_offset=coordinates[2],  # type: ignore[arg-type]
                )
                outcomes.append(
                    [Output(clean_topic, clean.SerializeToString(), clean.card_id, _CLEAN_HEADERS)]
                )
                pending[coordinates] = CLEAN
            else:
                outcomes.append([])
                pending[coordinates] = DUPLICATE
        quality = self._gate.quality
        if quality is not None:
            self._metrics.set_quality(quality.snapshot(), quality.events)
        return outcomes

    def on_delivered(self, batch: Sequence[Message]) -> None:
        """Book the batch's outcomes: called after the broker acknowledged them, before the commit."""
        m = self._metrics
        counts: dict[str, int] = {}
        for message in batch:
            kind = self._pending.pop((message.topic(), message.partition(), message.offset()), HANDLER_ERROR)
            counts[kind] = counts.get(kind, 0) + 1
        m.consumed.inc(len(batch))
        for kind, n in counts.items():
            if kind == CLEAN:
                m.clean.inc(n)
            elif kind == DUPLICATE:
                m.duplicates.inc(n)
            else:
                m.dead_lettered.labels(kind).inc(n)
        log.debug("batch_booked", messages=len(batch), **counts)
