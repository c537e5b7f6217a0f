"""Buffer between the vectors stream and the offline store: rows become durable in batches.

Each queued row carries a token (the stream event it came from); :meth:`OfflineSink.flush`
returns the tokens whose rows are on disk, so the caller acks exactly those. A failed write keeps
the rows for the next flush (bounded by ``max_pending``; beyond it the oldest are dropped and
counted), and the events stay un-acked, so a restart replays them.

A vector that cannot be made into a row is queued as :class:`Malformed`: nothing is written for
it and its event is acked like a skipped one (replaying it would not mend it), but it is counted
and logged, at most one warning per ``log_every_s`` with the count since the last one.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

from driftline.featurestore.offline import FeatureRow, OfflineStore
from driftline.services.features import metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Malformed:
    """Stands for the row of a vector that could not be decoded, with where it was read."""

    topic: str
    partition: int
    offset: int
    error: str


class OfflineSink:
    def __init__(
        self, store: OfflineStore, *, max_pending: int = 1_000_000, log_every_s: float = 10.0
    ) -> None:
        self.store = store
        self._max_pending = max_pending
        self._pending: list[tuple[Any, FeatureRow | None]] = []
        self._lock = threading.Lock()
        self._log_every_s = log_every_s
        self._malformed_unlogged = 0
        self._malformed_logged_at = -math.inf

    def add_many(self, items: list[tuple[Any, FeatureRow | Malformed | None]]) -> None:
        """Queue ``(token, row)`` pairs (row None or Malformed: nothing to write, the token is done
        at the next flush)."""
        malformed = [row for _, row in items if isinstance(row, Malformed)]
        if malformed:
            self._note_malformed(malformed)
            items = [(token, None if isinstance(row, Malformed) else row) for token, row in items]
        with self._lock:
            self._pending += items  # no Malformed left in them
            overflow = len(self._pending) - self._max_pending
            if overflow > 0:
                del self._pending[:overflow]
                metrics.OFFLINE_DROPPED.inc(overflow)
            metrics.OFFLINE_PENDING.set(len(self._pending))

    def flush(self) -> list[Any]:
        """Write every pending row in one append; returns the tokens now durable (none on failure)."""
        with self._lock:
            pending, self._pending = self._pending, []
        rows = [row for _, row in pending if row is not None]
        try:
            if rows:
                self.store.append(rows)
        except Exception as err:  # noqa: BLE001 - kept for the next flush, counted and logged
            metrics.OFFLINE_FAILURES.inc()
            log.warning("offline_flush_failed", rows=len(rows), error=str(err))
            with self._lock:
                self._pending = pending + self._pending
                metrics.OFFLINE_PENDING.set(len(self._pending))
            return []
        metrics.OFFLINE_ROWS.labels(self.store.feature_set.key).inc(len(rows))
        with self._lock:
            metrics.OFFLINE_PENDING.set(len(self._pending))
        return [token for token, _ in pending]

    def _note_malformed(self, malformed: list[Malformed]) -> None:
        metrics.OFFLINE_MALFORMED.inc(len(malformed))
        # One warning per interval: a producer gone wrong would otherwise log every message.
        self._malformed_unlogged += len(malformed)
        now = time.monotonic()
        if now - self._malformed_logged_at < self._log_every_s:
            return
        first = malformed[0]
        log.warning(
            "offline_vectors_malformed",
            count=self._malformed_unlogged,
            topic=first.topic,
            partition=first.partition,
            offset=first.offset,
            error=first.error,
        )
        self._malformed_unlogged = 0
        self._malformed_logged_at = now

    @property
    def pending(self) -> int:
        return len(self._pending)
