"""De-duplication by event id within a horizon, safe under at-least-once replays.

The first message to claim an event id stores its source coordinates (``topic/partition/offset``)
under the id, with a TTL (the horizon). A later message with the same id is a duplicate only
if its coordinates differ: when the process dies after the claim but before the offsets are
committed, the replayed message finds its own coordinates and goes through again, instead of
being lost as a "duplicate" of itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis


@dataclass(frozen=True)
class Claim:
    event_id: str
    #: Where this copy of the event was read: ``topic/partition/offset``.
    source: str


def source_token(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


class Deduplicator(Protocol):
    def claim(self, claims: Sequence[Claim]) -> list[bool]:
        """For each claim, in order: True when it is the event's first copy (or a replay of that
        very copy), False when another copy claimed the id within the horizon."""
        ...


# One script call per batch: a pipeline of SET commands costs more in client-side packing than the
# round trip it saves. Returns, per key, the source that already held it, or "" when this claim won.
_CLAIM_SCRIPT = """
local ttl = ARGV[#KEYS + 1]
local held = {}
for i, key in ipairs(KEYS) do
  local previous = redis.call('SET', key, ARGV[i], 'NX', 'GET', 'EX', ttl)
  if previous then held[i] = previous else held[i] = '' end
end
return held
"""


class RedisDeduplicator:
    """``SET key source NX GET EX ttl`` for every claim of a batch, in one server-side script.

    Keys: ``<prefix><event_id>``. Needs Redis 7.0 or newer (NX together with GET).
    """

    def __init__(self, client: redis.Redis, *, ttl_s: int, key_prefix: str) -> None:
        if ttl_s < 1:
            raise ValueError("the de-duplication horizon must be at least one second")
        self._ttl_s = ttl_s
        self._prefix = key_prefix
        self._script = client.register_script(_CLAIM_SCRIPT)

    def claim(self, claims: Sequence[Claim]) -> list[bool]:
        if not claims:
            return []
        prefix = self._prefix
        held = self._script(
            keys=[prefix + c.event_id for c in claims], args=[*(c.source for c in claims), self._ttl_s]
        )
        results = []
        for h, c in zip(held, claims, strict=True):
            previous = h.decode() if isinstance(h, bytes) else h
            results.append(previous == "" or previous == c.source)
        return results


class MemoryDeduplicator:
    """The same semantics in a dict, for unit tests and tools that have no Redis."""

    def __init__(self, *, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._seen: dict[str, tuple[str, float]] = {}

    def claim(self, claims: Sequence[Claim]) -> list[bool]:
        now = self._clock()
        results = []
        for c in claims:
            held = self._seen.get(c.event_id)
            if held is None or held[1] <= now:
                self._seen[c.event_id] = (c.source, now + self._ttl_s)
                results.append(True)
            else:
                results.append(held[0] == c.source)
        return results
