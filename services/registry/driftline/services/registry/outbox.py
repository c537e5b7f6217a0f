"""Transactional outbox: change events are rows written in the change's own transaction, and a
relay publishes them to the model-events topic afterwards.

The relay marks a row published only after the broker acknowledged it. While Kafka is down the
rows stay pending and the relay keeps trying; once Kafka returns they go out in order (outbox id
order, which is commit order because every writer holds the audit head lock when it inserts).
Delivery is at-least-once: a relay that dies between the broker's ack and its UPDATE publishes
the row again, so consumers de-duplicate by ``event_id``. Among several replicas only the holder
of a lease publishes, so events never interleave.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from driftline.kit.codec import utcnow
from driftline.kit.errors import Unavailable
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, Headers
from driftline.kit.topics import Topic
from driftline.services.registry.domain import EventType, ModelEvent
from driftline.services.registry.store import Database
from driftline.services.registry.store.repository import dumps, from_us, to_us
from driftline.services.registry.store.schema import outbox, outbox_lease

log = structlog.get_logger(__name__)

EVENT_ID_HEADER = "event-id"
_LEASE = "relay"

PENDING = Gauge("driftline_registry_outbox_pending", "Outbox events not yet acknowledged by Kafka.")
PUBLISHED = Counter("driftline_registry_outbox_published_total", "Outbox events acknowledged by Kafka.")
PUBLISH_FAILURES = Counter(
    "driftline_registry_outbox_publish_failures_total", "Relay passes that ended in a delivery failure."
)


def event_to_json(event: ModelEvent) -> str:
    return dumps(
        {
            "event_id": event.event_id,
            "type": int(event.type),
            "model_name": event.model_name,
            "occurred_at_us": to_us(event.occurred_at),
            "audit_seq": event.audit_seq,
            "actor": event.actor,
            "reason": event.reason,
            "version": event.version,
            "alias": event.alias,
            "previous_version": event.previous_version,
            "artifact_sha256": event.artifact_sha256,
            "run_id": event.run_id,
        }
    )


def event_from_json(text: str) -> ModelEvent:
    data = json.loads(text)
    return ModelEvent(
        event_id=data["event_id"],
        type=EventType(data["type"]),
        model_name=data["model_name"],
        occurred_at=from_us(data["occurred_at_us"]),
        audit_seq=data["audit_seq"],
        actor=data["actor"],
        reason=data["reason"],
        version=data["version"],
        alias=data["alias"],
        previous_version=data["previous_version"],
        artifact_sha256=data["artifact_sha256"],
        run_id=data["run_id"],
    )


def new_event_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class PendingEvent:
    id: int
    event: ModelEvent
    attempts: int


class Outbox:
    """The outbox table: written inside change transactions, drained by the relay."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @staticmethod
    def enqueue(conn: Connection, event: ModelEvent) -> None:
        """Add an event in the caller's transaction: it exists exactly when the change does."""
        conn.execute(
            insert(outbox).values(
                event_id=event.event_id,
                model_name=event.model_name,
                payload_json=event_to_json(event),
                created_at_us=to_us(event.occurred_at),
                published_at_us=None,
                attempts=0,
            )
        )

    def pending(self, limit: int) -> list[PendingEvent]:
        with self._db.read() as conn:
            rows = conn.execute(
                select(outbox.c.id, outbox.c.payload_json, outbox.c.attempts)
                .where(outbox.c.published_at_us.is_(None))
                .order_by(outbox.c.id)
                .limit(limit)
            )
            return [PendingEvent(r.id, event_from_json(r.payload_json), r.attempts) for r in rows]

    def pending_count(self) -> int:
        with self._db.read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at_us.is_(None))
                ).scalar_one()
            )

    def mark_published(self, ids: Sequence[int], now: datetime) -> None:
        if not ids:
            return
        with self._db.write() as conn:
            conn.execute(
                update(outbox)
                .where(and_(outbox.c.id.in_(ids), outbox.c.published_at_us.is_(None)))
                .values(published_at_us=to_us(now), attempts=outbox.c.attempts + 1)
            )

    def count_attempt(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._db.write() as conn:
            conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(attempts=outbox.c.attempts + 1))

    def acquire_lease(self, owner: str, lease_s: float, now: datetime) -> bool:
        """Take or renew the publishing lease; False while another live relay holds it."""
        now_us = to_us(now)
        expires = now_us + int(lease_s * 1_000_000)
        with self._db.write() as conn:
            taken = conn.execute(
                update(outbox_lease)
                .where(
                    and_(
                        outbox_lease.c.name == _LEASE,
                        or_(outbox_lease.c.owner == owner, outbox_lease.c.expires_at_us < now_us),
                    )
                )
                .values(owner=owner, expires_at_us=expires)
            ).rowcount
            if taken == 1:
                return True
            if conn.execute(select(outbox_lease.c.name).where(outbox_lease.c.name == _LEASE)).first():
                return False
        try:
            with self._db.write() as conn:
                conn.execute(insert(outbox_lease).values(name=_LEASE, owner=owner, expires_at_us=expires))
        except IntegrityError:
            return False
        return True

    def release_lease(self, owner: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                update(outbox_lease)
                .where(and_(outbox_lease.c.name == _LEASE, outbox_lease.c.owner == owner))
                .values(expires_at_us=0)
            )


class EventPublisher(Protocol):
    """What the relay needs of ``driftline.kit.kafka.KafkaProducer``."""

    def send(
        self,
        topic: Topic | str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
    ) -> concurrent.futures.Future[Any]: ...


class PublishFailed(Exception):
    """The broker did not acknowledge an outbox event; it stays pending."""


class OutboxRelay:
    """Publishes pending outbox rows, in order, marking each sent only once acknowledged."""

    def __init__(
        self,
        outbox_: Outbox,
        publisher: EventPublisher,
        topic: Topic,
        encode: Callable[[ModelEvent], bytes],
        *,
        poll_interval_s: float = 1.0,
        batch_size: int = 100,
        lease_s: float = 30.0,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._outbox = outbox_
        self._publisher = publisher
        self._topic = topic
        self._encode = encode
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._lease_s = lease_s
        self.owner = owner or f"relay-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self.published = 0

    def notify(self) -> None:
        """Wake the relay now (safe from any thread): a change was just committed."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        self._stopping = True
        self.notify()

    async def run(self) -> None:
        """Publish until ``stop()``; failures are logged and retried after the poll interval."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        log.info("outbox_relay_started", owner=self.owner, topic=self._topic.name)
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    await self.publish_pending()
                except PublishFailed as err:
                    log.warning("outbox_publish_failed", error=str(err.__cause__ or err))
                except (SQLAlchemyError, Unavailable) as err:  # Unavailable: the database is out
                    log.warning("outbox_database_error", error=str(err))
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
        finally:
            try:
                await asyncio.to_thread(self._outbox.release_lease, self.owner)
            except (SQLAlchemyError, Unavailable) as err:
                log.warning("outbox_lease_release_failed", error=str(err))
            log.info("outbox_relay_stopped", owner=self.owner, published=self.published)

    async def publish_pending(self) -> int:
        """Publish everything pending now; return how many were acknowledged.

        Raises PublishFailed when the broker did not acknowledge an event: that event and the
        ones after it stay pending for the next pass, so order is kept.
        """
        if not await asyncio.to_thread(self._outbox.acquire_lease, self.owner, self._lease_s, self._clock()):
            return 0
        total = 0
        try:
            while not self._stopping:
                batch = await asyncio.to_thread(self._outbox.pending, self._batch_size)
                if not batch:
                    break
                acked, error = await self._publish(batch)
                if acked:
                    await asyncio.to_thread(self._outbox.mark_published, [p.id for p in acked], self._clock())
                    total += len(acked)
                    self.published += len(acked)
                    PUBLISHED.inc(len(acked))
                    log.info("outbox_published", events=len(acked), last_audit_seq=acked[-1].event.audit_seq)
                if error is not None:
                    PUBLISH_FAILURES.inc()
                    rest = [p.id for p in batch[len(acked) :]]
                    await asyncio.to_thread(self._outbox.count_attempt, rest)
                    raise PublishFailed(f"{len(rest)} events not acknowledged") from error
        finally:
            PENDING.set(await asyncio.to_thread(self._outbox.pending_count))
        return total

    async def _publish(self, batch: list[PendingEvent]) -> tuple[list[PendingEvent], BaseException | None]:
        """Send a batch; return the acknowledged prefix and the first failure, if any."""
        futures = []
        for item in batch:
            headers: Headers = [
                (CONTENT_TYPE, PROTOBUF.encode()),
                (EVENT_ID_HEADER, item.event.event_id.encode()),
            ]
            sent = self._publisher.send(
                self._topic, self._encode(item.event), key=item.event.model_name, headers=headers
            )
            futures.append(asyncio.wrap_future(sent))
        # Let every send settle before deciding: re-sending one still in flight would duplicate it.
        results = await asyncio.gather(*futures, return_exceptions=True)
        acked: list[PendingEvent] = []
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                return acked, result
            acked.append(item)
        return acked, None
