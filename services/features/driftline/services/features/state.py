"""Per-entity stream state in Redis: the bounded event buffer and the profile of each entity.

Keys (beside the online store's feature hash ``{prefix}:{set}:v{n}:{entity}``):
``{prefix}:state:{set}:v{n}:{entity}:events``, a sorted set of encoded events scored by event
time (members are deterministic bytes, so re-adding a replayed event is a no-op), and
``...:{entity}:profile``, the entity's first-seen values as JSON. A batch's state changes and its
guarded feature writes commit in one MULTI/EXEC, so Redis never holds features that its state
does not explain; a crash before EXEC leaves nothing, and the replay redoes it all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from driftline.featurestore.aggregation import Profile
from driftline.featurestore.definitions import FeatureSet
from driftline.featurestore.events import Event, decode_events, encode_event
from driftline.featurestore.online import AsyncOnlineStore, FeatureWrite


@dataclass(frozen=True)
class EntityState:
    events: list[Event]
    profile: Profile | None


@dataclass
class StateUpdate:
    """What one batch changed for one entity."""

    entity_id: str
    added: list[Event] = field(default_factory=list)
    removed: list[Event] = field(default_factory=list)
    profile: Profile | None = None
    features: FeatureWrite | None = None


class RedisState:
    """Loads and saves entity state; saves commit with the feature writes in one transaction."""

    def __init__(
        self,
        client: aioredis.Redis,
        online: AsyncOnlineStore,
        feature_set: FeatureSet,
        *,
        key_prefix: str = "dl:fs",
        key_ttl_s: float = 86_400.0,
    ) -> None:
        self._client = client
        self._online = online
        self._prefix = f"{key_prefix}:state:{feature_set.name}:v{feature_set.version}:"
        self._expire_ms = int(key_ttl_s * 1000)

    def events_key(self, entity_id: str) -> str:
        return f"{self._prefix}{entity_id}:events"

    def profile_key(self, entity_id: str) -> str:
        return f"{self._prefix}{entity_id}:profile"

    async def load(self, entity_ids: Sequence[str]) -> dict[str, EntityState]:
        """Every entity's buffered events and profile, in one round trip."""
        if not entity_ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.zrange(self.events_key(entity_id), 0, -1)
            pipe.get(self.profile_key(entity_id))
        replies = await pipe.execute()
        states = {}
        for i, entity_id in enumerate(entity_ids):
            members, profile = replies[2 * i], replies[2 * i + 1]
            states[entity_id] = EntityState(
                events=decode_events(entity_id, members),
                profile=Profile.from_json(json.loads(profile)) if profile else None,
            )
        return states

    async def save(self, updates: Sequence[StateUpdate]) -> None:
        """Apply every update and its feature write atomically (MULTI/EXEC), in one round trip."""
        if not updates:
            return
        pipe = self._client.pipeline(transaction=True)
        writes = []
        for update in updates:
            events_key = self.events_key(update.entity_id)
            if update.added:
                pipe.zadd(events_key, {encode_event(e): e.event_time for e in update.added})
            if update.removed:
                pipe.zrem(events_key, *[encode_event(e) for e in update.removed])
            pipe.pexpire(events_key, self._expire_ms)
            if update.profile is not None:
                pipe.set(
                    self.profile_key(update.entity_id),
                    json.dumps(update.profile.to_json(), sort_keys=True),
                    px=self._expire_ms,
                )
            else:
                pipe.pexpire(self.profile_key(update.entity_id), self._expire_ms)
            if update.features is not None:
                writes.append(update.features)
        await self._online.stage_writes(pipe, writes)
        await pipe.execute()
