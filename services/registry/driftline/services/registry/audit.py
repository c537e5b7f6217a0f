"""The append-only, hash-chained audit log of every registry change.

Record ``n`` stores ``hash_n = H(canonical(seq, at, actor, action, model, subject, reason, before,
after, hash_{n-1}))`` with ``hash_0`` = 64 zeros, where H is SHA-256 (or HMAC-SHA256 when an audit
key is configured). Editing, deleting or re-ordering a record breaks every hash after it; the
``audit_head`` row (last seq and hash, updated in the same transaction) also exposes a truncated
tail. The database refuses UPDATE and DELETE on the table with triggers besides.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, select, update

from driftline.services.registry.domain import Action, AuditRecord, AuditVerification
from driftline.services.registry.store import GENESIS_HASH
from driftline.services.registry.store.repository import dumps, from_us, to_us
from driftline.services.registry.store.schema import audit, audit_head

_ALIAS_ACTIONS = (Action.ALIAS_SET.value, Action.ALIAS_DELETED.value)


class AuditLog:
    """Appends to, reads and verifies the chain. Appends run inside the caller's transaction."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or None

    def record_hash(
        self,
        *,
        seq: int,
        at_us: int,
        actor: str,
        action: str,
        model_name: str,
        subject: str,
        reason: str,
        before_json: str,
        after_json: str,
        prev_hash: str,
    ) -> str:
        canonical = json.dumps(
            [seq, at_us, actor, action, model_name, subject, reason, before_json, after_json, prev_hash],
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode()
        if self._key is not None:
            return hmac.new(self._key, canonical, hashlib.sha256).hexdigest()
        return hashlib.sha256(canonical).hexdigest()

    def append(
        self,
        conn: Connection,
        *,
        now: datetime,
        actor: str,
        action: Action,
        model_name: str,
        subject: str,
        reason: str,
        before: Any,
        after: Any,
    ) -> AuditRecord:
        """Add one record. Locking the head row serialises concurrent appenders."""
        head = conn.execute(select(audit_head).where(audit_head.c.id == 1).with_for_update()).one()
        seq = head.seq + 1
        # Never step back in time, even if the clock does: "alias X at time T" relies on it.
        at_us = max(to_us(now), head.at_us)
        before_json = dumps(before)
        after_json = dumps(after)
        digest = self.record_hash(
            seq=seq,
            at_us=at_us,
            actor=actor,
            action=action.value,
            model_name=model_name,
            subject=subject,
            reason=reason,
            before_json=before_json,
            after_json=after_json,
            prev_hash=head.hash,
        )
        conn.execute(
            insert(audit).values(
                seq=seq,
                at_us=at_us,
                actor=actor,
                action=action.value,
                model_name=model_name,
                subject=subject,
                reason=reason,
                before_json=before_json,
                after_json=after_json,
                prev_hash=head.hash,
                hash=digest,
            )
        )
        conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=digest, at_us=at_us))
        return AuditRecord(
            seq=seq,
            at=from_us(at_us),
            actor=actor,
            action=action.value,
            model_name=model_name,
            subject=subject,
            reason=reason,
            before_json=before_json,
            after_json=after_json,
            prev_hash=head.hash,
            hash=digest,
        )

    def list(
        self, conn: Connection, *, model_name: str = "", after_seq: int = 0, limit: int = 100
    ) -> list[AuditRecord]:
        query = select(audit).where(audit.c.seq > after_seq).order_by(audit.c.seq).limit(limit)
        if model_name:
            query = query.where(audit.c.model_name == model_name)
        return [_record(row) for row in conn.execute(query)]

    def verify(self, conn: Connection) -> AuditVerification:
        """Recompute the chain from the first record; report the first sequence number that fails."""
        expected_seq = 1
        prev_hash = GENESIS_HASH
        count = 0
        rows = conn.execution_options(yield_per=1000).execute(select(audit).order_by(audit.c.seq))
        for row in rows:
            if row.seq != expected_seq or row.prev_hash != prev_hash:
                # A missing record (gap), or one that was re-linked.
                return AuditVerification(ok=False, records=count, broken_at=expected_seq)
            recomputed = self.record_hash(
                seq=row.seq,
                at_us=row.at_us,
                actor=row.actor,
                action=row.action,
                model_name=row.model_name,
                subject=row.subject,
                reason=row.reason,
                before_json=row.before_json,
                after_json=row.after_json,
                prev_hash=row.prev_hash,
            )
            if not hmac.compare_digest(recomputed, row.hash):
                return AuditVerification(ok=False, records=count, broken_at=row.seq)
            prev_hash = row.hash
            expected_seq += 1
            count += 1
        head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
        if head.seq != count or head.hash != prev_hash:
            # The tail was cut off (or the head row was edited).
            return AuditVerification(ok=False, records=count, broken_at=count + 1)
        return AuditVerification(ok=True, records=count)

    def last_actor(self, conn: Connection, *, model_name: str, subject: str, action: str) -> str | None:
        """Who made the model's latest change of kind ``action`` on ``subject``; None when there
        is none. An index lookup (``ix_audit_subject``), however long the model's history."""
        return conn.execute(
            select(audit.c.actor)
            .where(
                and_(audit.c.model_name == model_name, audit.c.subject == subject, audit.c.action == action)
            )
            .order_by(audit.c.seq.desc())
            .limit(1)
        ).scalar()

    def alias_at(self, conn: Connection, *, model_name: str, alias: str, at: datetime) -> int:
        """The version ``alias`` pointed at, at time ``at``; 0 when it pointed nowhere."""
        after_json = conn.execute(
            select(audit.c.after_json)
            .where(
                and_(
                    audit.c.model_name == model_name,
                    audit.c.subject == alias,
                    audit.c.action.in_(_ALIAS_ACTIONS),
                    audit.c.at_us <= to_us(at),
                )
            )
            .order_by(audit.c.seq.desc())
            .limit(1)
        ).scalar()
        if after_json is None:
            return 0
        return int(json.loads(after_json).get("version", 0))


def _record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        at=from_us(row.at_us),
        actor=row.actor,
        action=row.action,
        model_name=row.model_name,
        subject=row.subject,
        reason=row.reason,
        before_json=row.before_json,
        after_json=row.after_json,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
