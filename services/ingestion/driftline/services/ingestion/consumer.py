"""The Kafka adapter: a ConsumerLoop batch handler around the gate and the de-duplicator.

Per batch: examine every message, claim the valid ones' event ids in Redis (examining the next
part of the batch while Redis works), then return one outcome per message: the clean event
(keyed by card id), a dead letter with its reason code, or nothing for a duplicate. The loop
has the handler ``prepare`` the next batch, when it is already consumed, while it produces the
current one's outputs: the examining and the claims are done then, and Redis decides the claims
meanwhile; handling the batch then only reads the verdicts. The native gate examines each part
first and builds the clean events of the canonical valid messages; the Python gate decides the
rest (docs/adr/0006-native-ingestion-fast-path.md).

The accounting is booked in ``on_delivered``, which the loop calls once the outputs are
acknowledged and before it commits, so every consumed message is counted exactly once as clean,
dead-lettered or duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

import structlog
from confluent_kafka import Message
from driftline_fastgate import BatchGate
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.kit.codec import utcnow
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, DeadLetter, Outcome, Output, header
from driftline.kit.topics import Topic
from driftline.services.ingestion.contract import Violation
from driftline.services.ingestion.dedup import Claims, Deduplicator, source_token
from driftline.services.ingestion.gate import Accepted, Gate, Rejected, epoch_micros, timestamp, to_clean
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
#: A valid message's clean event as the Python path builds it: the serialised
#: ``CleanTransaction``, its key (the card id), its event id and its source coordinates
#: (``topic/partition/offset``), all bytes, as the native gate returns them.
_Clean = tuple[bytes, bytes, bytes, bytes]
#: A part as the native gate examined it: per message the clean event and key, the event id
#: and the source (each None when declined), and the indices of the declined messages.
_Examined = tuple[list[Any], list[Any], list[Any], Sequence[int]]
_new_tuple = tuple.__new__


class _Started(NamedTuple):
    """A batch examined and its claims sent: what is left is to read the verdicts."""

    #: Per message, the clean event and its key, or the rejection.
    entries: list[tuple[bytes, bytes] | Rejected]
    claims: Claims
    #: Messages the native gate accepted (the quality window counts them valid).
    fast_accepted: int
    #: What the quality window records for the messages the Python gate examined: recorded when
    #: the batch's outcomes are made, so a batch prepared and then handled afresh counts once.
    observed: list[Sequence[Violation]]


def _batch_key(messages: Sequence[Message]) -> _BatchKey:
    first = messages[0]
    return (first.topic(), first.partition(), first.offset(), len(messages))


class IngestionHandler:
    """Turns a batch of raw messages into outcomes; books what happened to each."""

    def __init__(
        self,
        gate: Gate,
        dedup: Deduplicator,
        clean_topic: Topic,
        metrics: IngestionMetrics,
        *,
        batch_gate: BatchGate | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._gate = gate
        self._dedup = dedup
        self._clean_topic = clean_topic.name
        self._metrics = metrics
        #: The native fast path (``native.compile_batch_gate``); None sends every message through
        #: the Python gate.
        self._batch_gate = batch_gate
        self._clock = clock
        #: What happened to each message of the handled batches not delivered yet (a retried
        #: batch overwrites its entry; a batch the loop split up has one entry per message).
        self._pending: dict[_BatchKey, list[str]] = {}
        #: The batch ``prepare`` started, if it is not handled yet.
        self._prepared: tuple[_BatchKey, _Started] | None = None

    def prepare(self, messages: Sequence[Message]) -> None:
        """Examine the next batch and send its claims; ``__call__`` on it reads the verdicts."""
        self._forget_prepared()
        if messages:
            self._prepared = (_batch_key(messages), self._start(messages))

    def __call__(self, messages: Sequence[Message]) -> list[Outcome]:
        prepared = self._prepared
        if prepared is not None and messages and prepared[0] == _batch_key(messages):
            self._prepared = None
            started = prepared[1]
        else:
            # Not this batch: a retry, a part of a batch the loop split up, or none was prepared.
            self._forget_prepared()
            started = self._start(messages)
        with started.claims as claims:
            won = iter(claims.verdicts())
        return self._outcomes(messages, started, won)

    def _forget_prepared(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared[1].claims.close()  # its replies unread: dropped with their connection

    def _start(self, messages: Sequence[Message]) -> _Started:
        """Examine the batch and send the valid messages' claims, part by part: Redis decides
        one part's claims while the next part is examined."""
        now = self._clock()
        ingested_at = timestamp(now)
        fast = self._fast_path(now, ingested_at)
        entries: list[tuple[bytes, bytes] | Rejected] = []
        fast_accepted = 0
        observed: list[Sequence[Violation]] = []
        claims = self._dedup.claims()
        try:
            for start in range(0, len(messages), _CLAIM_PART):
                part = messages[start : start + _CLAIM_PART]
                cleans, event_ids, sources, declined = fast(part)
                fast_accepted += len(part) - len(declined)
                for i in declined:
                    verdict = self._examine(part[i], now, ingested_at, observed)
                    if type(verdict) is Rejected:
                        cleans[i] = verdict
                    else:
                        clean, key, event_ids[i], sources[i] = cast(_Clean, verdict)
                        cleans[i] = (clean, key)
                if declined:  # claims in message order, for the accepted messages only
                    event_ids = [e for e in event_ids if e is not None]
                    sources = [s for s in sources if s is not None]
                claims.send(cast(list[bytes], event_ids), cast(list[bytes], sources))
                entries += cast(list[tuple[bytes, bytes] | Rejected], cleans)
        except BaseException:
            claims.close()
            raise
        return _Started(entries, claims, fast_accepted, observed)

    def _outcomes(self, messages: Sequence[Message], started: _Started, won: Iterator[bool]) -> list[Outcome]:
        clean_topic = self._clean_topic
        outcomes: list[Outcome] = []
        kinds: list[str] = []
        for entry in started.entries:
            if type(entry) is Rejected:
                rejected = cast(Rejected, entry)
                reason = rejected.reason.value
                outcomes.append(DeadLetter(reason, rejected.detail))
                kinds.append(reason)
            elif next(won):
                # tuple.__new__ builds the named tuple in C (Output(...) runs Python code).
                outcomes.append([_new_tuple(Output, (clean_topic, entry[0], entry[1], _CLEAN_HEADERS))])
                kinds.append(CLEAN)
            else:
                outcomes.append([])
                kinds.append(DUPLICATE)
        if messages:
            self._pending[_batch_key(messages)] = kinds
        quality = self._gate.quality
        if quality is not None:
            for violations in started.observed:
                quality.observe(violations)
            quality.observe_valid(started.fast_accepted)
            self._metrics.set_quality(quality.snapshot(), quality.events)
        return outcomes

    def _fast_path(self, now: datetime, ingested_at: Timestamp) -> Callable[[Sequence[Message]], _Examined]:
        """The native gate with this batch's clocks, or a path that declines every message."""
        native = self._batch_gate
        if native is None:
            return lambda part: ([None] * len(part), [None] * len(part), [None] * len(part), range(len(part)))
        now_us = epoch_micros(now)
        ingested = (ingested_at.seconds, ingested_at.nanos)
        return lambda part: cast(_Examined, native.examine(part, now_us, ingested))

    def _examine(
        self, message: Message, now: datetime, ingested_at: Timestamp, observed: list[Sequence[Violation]]
    ) -> _Clean | Rejected:
        """The Python gate's verdict on one message, with its clean event when it is valid; what
        the quality window is to record goes to ``observed``."""
        verdict = self._gate.examine(
            message.value(),
            header(message, CONTENT_TYPE),
            now,
            canonical_json_declined=self._batch_gate is not None,
            observed=observed,
        )
        if type(verdict) is Rejected:
            return verdict
        topic, partition, offset = (
            cast(str, message.topic()),
            cast(int, message.partition()),
            cast(int, message.offset()),
        )
        clean = to_clean(
            cast(Accepted, verdict).values,
            ingested_at=ingested_at,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
        )
        return (
            clean.SerializeToString(),
            clean.card_id.encode(),
            clean.event_id.encode(),
            source_token(topic, partition, offset).encode(),
        )

    def on_delivered(self, batch: Sequence[Message]) -> None:
        """Book the batch's outcomes: called after the broker acknowledged them, before the commit."""
        m = self._metrics
        counts = Counter(self._kinds(batch))
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
        kinds = self._pending.pop(_batch_key(batch), None)
        if kinds is not None:
            return kinds
        # The loop handled this batch message by message (it isolates a failing message that
        # way), or gave up on a message and dead-lettered it itself.
        found = []
        for message in batch:
            alone = self._pending.pop((message.topic(), message.partition(), message.offset(), 1), None)
            found.append(alone[0] if alone else HANDLER_ERROR)
        return found
