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
from driftline.featurestore.online import GUARDED_WRITE_LUA, AsyncOnlineStore, FeatureWrite


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


# KEYS: the feature hash, the events zset, the profile key. ARGV[1]: event time of the newest
# values; ARGV[2]: expiry in ms; ARGV[3]: the values for guarded_write; ARGV[4]: JSON array
# [score, member, ...] to add; ARGV[5]: JSON array of members to remove; ARGV[6]: the profile JSON
# or "" when unchanged. Scores and values travel as strings: nothing is rounded in Lua.
SAVE_SCRIPT = (
    GUARDED_WRITE_LUA
    + """
if ARGV[4] ~= '[]' then
  local added = cjson.decode(ARGV[4])
  for i = 1, #added, 2 do
    redis.call('ZADD', KEYS[2], added[i], added[i + 1])
  end
end
if ARGV[5] ~= '[]' then
  local removed = cjson.decode(ARGV[5])
  for i = 1, #removed do
    redis.call('ZREM', KEYS[2], removed[i])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
if ARGV[3] ~= '' then
  return guarded_write(KEYS[1], ARGV[1], ARGV[3], ARGV[2])
end
return 0
"""
)


class RedisState:
    """Loads and saves entity state; one script per entity, the whole batch in one MULTI/EXEC."""

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
        self._expire_ms = str(int(key_ttl_s * 1000))
        self._save = client.register_script(SAVE_SCRIPT)

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
        """Apply every update and its guarded feature write atomically, in one round trip."""
        if not updates:
            return
        pipe = self._client.pipeline(transaction=True)
        compact = (",", ":")
        for update in updates:
            if update.features is not None:
                event_time, _, values = self._online.write_args(update.features)
            else:
                event_time, values = "0", ""
            added: list[str] = []
            for e in update.added:
                added += [repr(e.event_time), encode_event(e).decode()]
            await self._save(
                keys=[
                    self._online.key(update.entity_id),
                    self.events_key(update.entity_id),
                    self.profile_key(update.entity_id),
                ],
                args=[
                    event_time,
                    self._expire_ms,
                    values,
                    json.dumps(added, separators=compact),
                    json.dumps([encode_event(e).decode() for e in update.removed], separators=compact),
                    json.dumps(update.profile.to_json(), sort_keys=True)
                    if update.profile is not None
                    else "",
                ],
                client=pipe,
            )
        await pipe.execute()
