"""Buffer between the vectors stream and the offline store: rows become durable in batches.

Each queued row carries a token (the stream event it came from); :meth:`OfflineSink.flush`
returns the tokens whose rows are on disk, so the caller acks exactly those. A failed write keeps
the rows for the next flush (bounded by ``max_pending``; beyond it the oldest are dropped and
counted), and the events stay un-acked, so a restart replays them.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from driftline.featurestore.offline import FeatureRow, OfflineStore
from driftline.services.features import metrics

log = structlog.get_logger(__name__)


class OfflineSink:
    def __init__(self, store: OfflineStore, *, max_pending: int = 1_000_000) -> None:
        self.store = store
        self._max_pending = max_pending
        self._pending: list[tuple[Any, FeatureRow | None]] = []
        self._lock = threading.Lock()

    def add_many(self, items: list[tuple[Any, FeatureRow | None]]) -> None:
        """Queue ``(token, row)`` pairs (row None: nothing to write, the token is done at the next
        flush)."""
        with self._lock:
            self._pending += items
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

    @property
    def pending(self) -> int:
        return len(self._pending)
