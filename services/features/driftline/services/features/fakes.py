"""In-memory stand-ins for unit tests (the integration tests use the real Redis)."""

from __future__ import annotations

from collections.abc import Sequence

from driftline.featurestore.aggregation import Profile
from driftline.featurestore.events import Event
from driftline.services.features.state import EntityState, StateUpdate


class MemoryState:
    """In-memory stand-in for RedisState with the same merge semantics (set of events)."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Event]] = {}
        self.profiles: dict[str, Profile] = {}
        self.features: dict[str, tuple[float, tuple[float, ...]]] = {}
        self.saves = 0
        self.fail_next = 0
        self.fail_save_next = 0
        self.loads = 0

    async def load(self, entity_ids: Sequence[str]) -> dict[str, EntityState]:
        self.loads += 1
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down")
        return {
            e: EntityState(events=list(self.events.get(e, {}).values()), profile=self.profiles.get(e))
            for e in entity_ids
        }

    async def save(self, updates: Sequence[StateUpdate]) -> None:
        if self.fail_save_next:
            self.fail_save_next -= 1
            raise ConnectionError("redis down during save")
        self.saves += 1
        for u in updates:
            bucket = self.events.setdefault(u.entity_id, {})
            for e in u.added:
                bucket[e.event_id] = e
            for e in u.removed:
                bucket.pop(e.event_id, None)
            if u.profile is not None:
                self.profiles[u.entity_id] = u.profile
            if u.features is not None:
                old = self.features.get(u.entity_id)
                if old is None or old[0] <= u.features.event_time:
                    self.features[u.entity_id] = (u.features.event_time, tuple(u.features.values))
