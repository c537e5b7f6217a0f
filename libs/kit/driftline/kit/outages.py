"""Telling a dependency's outage from a bad message, and how long to wait it out.

A handler that fails because a dependency (Redis, the registry) cannot be reached has not found
a bad message. Retrying a few times and then isolating and dead-lettering the batch, as for any
other failure, would move good events off the stream as soon as an outage outlasts the retries:
nothing lost, but nothing delivered either until someone replays the dead letters. Consumers
instead hold such a batch back, untouched and uncommitted, for as long as the outage lasts, and
try it again after a capped exponential back-off; their lag grows, and the alert on
``driftline_outage_waits_total`` says why. Only other failures count towards the retries after
which a message is isolated and dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

from driftline.kit.errors import Unavailable

log = structlog.get_logger(__name__)

OUTAGE_WAITS = Counter(
    "driftline_outage_waits_total",
    "Batches held back because a dependency was unavailable, per consumer (group or agent).",
    ["consumer"],
)


@dataclass(frozen=True)
class OutagePolicy:
    """Which failures mean "a dependency is down", and the back-off while it is.

    ``driftline.kit.errors.Unavailable`` always does; ``errors`` adds a client's own exception
    types (``driftline.kit.redis_clients.REDIS_OUTAGE`` for Redis).
    """

    errors: tuple[type[BaseException], ...] = ()
    #: The first wait; it doubles per consecutive failed attempt, up to ``cap_s``.
    base_s: float = 0.5
    cap_s: float = 10.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < self.base_s:
            raise ValueError("the back-off needs 0 <= base_s <= cap_s")

    def is_outage(self, err: BaseException) -> bool:
        return isinstance(err, (Unavailable, *self.errors))

    def backoff_s(self, attempt: int) -> float:
        """The wait after the ``attempt``-th consecutive failed attempt (from 1)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 62))

    def hold(self, consumer: str, attempt: int, err: BaseException | None, **context: Any) -> float:
        """Book that ``consumer`` holds its batch back after its ``attempt``-th consecutive outage
        (``driftline_outage_waits_total`` and a ``dependency_unavailable`` warning); returns how
        long it waits before trying again."""
        wait_s = self.backoff_s(attempt)
        OUTAGE_WAITS.labels(consumer).inc()
        log.warning(
            "dependency_unavailable",
            consumer=consumer,
            attempt=attempt,
            retry_in_s=wait_s,
            error=f"{type(err).__name__}: {err}",
            **context,
        )
        return wait_s
