"""The Kafka adapter: a ConsumerLoop batch handler around the gate and the de-duplicator.

Per batch: examine every message, claim the valid ones' event ids in one Redis round trip
(building their clean events while Redis works), then return one outcome per message: the clean
event (keyed by card id), a dead letter with its reason code, or nothing for a duplicate. The
accounting is booked in ``on_delivered``, which the loop calls once the outputs are acknowledged
and before it commits, so every consumed message is counted exactly once as clean,
dead-lettered or duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import cast

import structlog
from confluent_kafka import Message
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.kit.codec import utcnow
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, DeadLetter, Outcome, Output, header
from driftline.kit.topics import Topic
from driftline.services.ingestion.dedup import Deduplicator, source_token
from driftline.services.ingestion.gate import Accepted, Gate, Rejected, Verdict, timestamp, to_clean
from driftline.services.ingestion.metrics import IngestionMetrics

log = structlog.get_logger(__name__)

CLEAN = "clean"
DUPLICATE = "duplicate"
#: What the loop dead-letters on its own when the handler keeps failing on a message.
HANDLER_ERROR = "handler_error"

#: A handled batch: the coordinates of its first message, and its length.
_BatchKey = tuple[str | None, int | None, int | None, int]
_CLEAN_HEADERS = [(CONTENT_TYPE, PROTOBUF.encode())]
#: Messages examined per de-duplication round trip sent (the rest of a batch overlaps with it).
_CLAIM_PART = 250


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
        #: What happened to each message of the handled batches not delivered yet (a retried
        #: batch overwrites its entry; a batch the loop split up has one entry per message).
        self._pending: dict[_BatchKey, list[str]] = {}

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        now = self._clock()
        ingested_at = timestamp(now)
        examine = self._gate.examine
        verdicts: list[Verdict] = []
        cleans: dict[int, Output] = {}
        with self._dedup.claims() as claims:
            # Part by part: Redis decides one part's claims while the next part is examined.
            for start in range(0, len(messages), _CLAIM_PART):
                part = messages[start : start + _CLAIM_PART]
                verdicts += [examine(m.value(), header(m, CONTENT_TYPE), now) for m in part]
                accepted = [i for i in range(start, start + len(part)) if type(verdicts[i]) is Accepted]
                claims.send(
                    [cast(Accepted, verdicts[i]).event_id for i in accepted],
                    [
                        source_token(m.topic(), m.partition(), m.offset())
                        for m in map(messages.__getitem__, accepted)
                    ],
                )
                # Every accepted event's clean message (a duplicate's is dropped below).
                cleans.update(self._clean_outputs(messages, verdicts, accepted, ingested_at))
            won = dict(zip(cleans, claims.verdicts(), strict=True))
        outcomes: list[Outcome] = []
        kinds: list[str] = []
        for i, verdict in enumerate(verdicts):
            if type(verdict) is Rejected:
                reason = verdict.reason.value
                outcomes.append(DeadLetter(reason, verdict.detail))
                kinds.append(reason)
            elif won[i]:
                outcomes.append([cleans[i]])
                kinds.append(CLEAN)
            else:
                outcomes.append([])
                kinds.append(DUPLICATE)
        if messages:
            first = messages[0]
            self._pending[(first.topic(), first.partition(), first.offset(), len(messages))] = kinds
        quality = self._gate.quality
        if quality is not None:
            self._metrics.set_quality(quality.snapshot(), quality.events)
        return outcomes

    def _clean_outputs(
        self,
        messages: Sequence[Message],
        verdicts: list[Verdict],
        accepted: list[int],
        ingested_at: Timestamp,
    ) -> dict[int, Output]:
        clean_topic = self._clean_topic
        cleans: dict[int, Output] = {}
        for i in accepted:
            m = messages[i]
            clean = to_clean(
                cast(Accepted, verdicts[i]).values,
                ingested_at=ingested_at,
                source_topic=cast(str, m.topic()),
                source_partition=cast(int, m.partition()),
                source_offset=cast(int, m.offset()),
            )
            cleans[i] = Output(clean_topic, clean.SerializeToString(), clean.card_id, _CLEAN_HEADERS)
        return cleans

    def on_delivered(self, batch: Sequence[Message]) -> None:
        """Book the batch's outcomes: called after the broker acknowledged them, before the commit."""
        m = self._metrics
        counts: dict[str, int] = {}
        for kind in self._kinds(batch):
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

    def _kinds(self, batch: Sequence[Message]) -> list[str]:
        if not batch:
            return []
        first = batch[0]
        kinds = self._pending.pop((first.topic(), first.partition(), first.offset(), len(batch)), None)
        if kinds is not None:
            return kinds
        # The loop handled this batch message by message (it isolates a failing message that
        # way), or gave up on a message and dead-lettered it itself.
        found = []
        for message in batch:
            alone = self._pending.pop((message.topic(), message.partition(), message.offset(), 1), None)
            found.append(alone[0] if alone else HANDLER_ERROR)
        return found
