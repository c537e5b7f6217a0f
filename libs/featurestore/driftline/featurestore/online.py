"""The online store: one Redis hash per entity and feature set version.

Key ``{prefix}:{feature_set}:v{version}:{entity_id}`` (prefix ``dl:fs`` by default); fields
``{feature}`` (the value, as Python's shortest round-tripping repr) and ``{feature}@t`` (event
time of the newest event behind it, epoch seconds). Writes go through a Lua script that sets a
value only when its stored event time is not newer, so a replay never moves a value backwards.
Reads fetch any number of entities in one pipelined round trip and judge freshness on read: a
value older than its feature's ttl is STALE, never OK, whatever Redis still holds. The key's
Redis expiry is garbage collection only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram

from driftline.featurestore.aggregation import Computed
from driftline.featurestore.definitions import TRANSACTION_FEATURES, FeatureSet
from driftline.featurestore.events import epoch_seconds
from driftline.featurestore.vectors import (
    EntityFeatures,
    FeatureStatus,
    FeaturesUnavailable,
    FeatureValue,
    StalenessPolicy,
)
from driftline.kit.errors import InvalidArgument
from driftline.kit.settings import RedisSettings

DEFAULT_KEY_PREFIX = "dl:fs"

FEATURE_AGE = Histogram(
    "driftline_featurestore_feature_age_seconds",
    "Age (read time minus event time) of the oldest value in each entity vector read.",
    ["feature_set"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
ENTITY_READS = Counter(
    "driftline_featurestore_entity_reads_total",
    "Entity vectors read from the online store, by worst feature status (ok, stale, missing).",
    ["feature_set", "status"],
)
READ_SECONDS = Histogram(
    "driftline_featurestore_read_seconds",
    "Time of one online-store read call (one round trip, any number of entities).",
    ["feature_set"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)

# A Lua function other scripts embed (the stream's state script does): write each value of a
# JSON object {name: "repr of the value"} unless the stored value's event time is newer.
# Values stay strings end to end, so no precision is lost in Lua numbers.
GUARDED_WRITE_LUA = """
local function guarded_write(key, t_text, values_json, expire_ms)
  local t = tonumber(t_text)
  local values = cjson.decode(values_json)
  local written = 0
  for i = 1, #values, 2 do
    local time_field = values[i] .. '@t'
    local old = redis.call('HGET', key, time_field)
    if (not old) or tonumber(old) <= t then
      redis.call('HSET', key, values[i], values[i + 1], time_field, t_text)
      written = written + 1
    end
  end
  if expire_ms ~= '0' then
    redis.call('PEXPIRE', key, expire_ms)
  end
  return written
end
"""

# KEYS[1]: the entity hash. ARGV[1]: event time (epoch s); ARGV[2]: key expiry in ms (0: none);
# ARGV[3]: JSON array [name, value, name, value, ...]. Returns how many values were written.
WRITE_SCRIPT = GUARDED_WRITE_LUA + "return guarded_write(KEYS[1], ARGV[1], ARGV[3], ARGV[2])\n"


@dataclass(frozen=True, slots=True)
class FeatureWrite:
    """One entity's values (feature order) as of the event time of their newest event."""

    entity_id: str
    event_time: float
    values: Sequence[float]

    @classmethod
    def from_computed(cls, entity_id: str, computed: Computed) -> FeatureWrite:
        return cls(entity_id=entity_id, event_time=computed.event_time, values=computed.values)


class _Layout:
    """Key format, encoding and read semantics shared by the sync and async stores."""

    def __init__(self, feature_set: FeatureSet, key_prefix: str, key_ttl_s: float | None) -> None:
        self.feature_set = feature_set
        self.prefix = f"{key_prefix}:{feature_set.name}:v{feature_set.version}:"
        self.names = feature_set.feature_names
        # Per feature: name, value field, time field, ttl, default (bytes fields: what HGETALL returns).
        self.specs = [
            (f.name, f.name.encode(), f"{f.name}@t".encode(), f.ttl_s, f.default)
            for f in feature_set.features
        ]
        self.defaults = feature_set.defaults
        self.expire_ms = "0" if not key_ttl_s else str(int(key_ttl_s * 1000))
        self.label = feature_set.key
        self._age = FEATURE_AGE.labels(self.label)
        self._reads = {
            status: ENTITY_READS.labels(self.label, status.name.lower()) for status in FeatureStatus
        }
        self._seconds = READ_SECONDS.labels(self.label)

    def key(self, entity_id: str) -> str:
        return self.prefix + entity_id

    def write_args(
        self, write: FeatureWrite | tuple[str, Mapping[str, float] | Sequence[float], Any]
    ) -> list[str]:
        given: Mapping[str, float] | Sequence[float]
        if isinstance(write, FeatureWrite):
            given, event_time = write.values, write.event_time
        else:
            _, given, moment = write
            event_time = epoch_seconds(moment)
        values: Sequence[float]
        if isinstance(given, Mapping):
            try:
                values = [given[n] for n in self.names]
            except KeyError as err:
                raise InvalidArgument(f"missing feature {err.args[0]!r}", code="missing_feature") from None
        else:
            values = given
        if len(values) != len(self.names):
            raise InvalidArgument(f"expected {len(self.names)} values, got {len(values)}", code="wrong_shape")
        pairs: list[str] = []
        for name, value in zip(self.names, values, strict=True):
            number = float(value)
            if not math.isfinite(number):
                raise InvalidArgument(f"feature {name} is {number}", code="not_finite")
            pairs += [name, repr(number)]
        return [repr(float(event_time)), self.expire_ms, json.dumps(pairs, separators=(",", ":"))]

    def parse_all(
        self,
        entity_ids: Sequence[str],
        raws: Sequence[Mapping[bytes, bytes]],
        now: float,
        policy: StalenessPolicy,
    ) -> list[EntityFeatures]:
        """Judge every value as of ``now`` and build the vectors; records the read metrics."""
        serve_stale = policy is StalenessPolicy.SERVE
        ok, stale, missing = FeatureStatus.OK, FeatureStatus.STALE, FeatureStatus.MISSING
        make = tuple.__new__
        name_, version = self.feature_set.name, self.feature_set.version
        counts = {ok: 0, stale: 0, missing: 0}
        observe = self._age.observe
        results = []
        for entity_id, raw in zip(entity_ids, raws, strict=True):
            values: list[FeatureValue] = []
            worst = ok
            oldest: float | None = None
            for name, value_field, time_field, ttl, default in self.specs:
                value = raw.get(value_field)
                stamp = raw.get(time_field)
                if value is None or stamp is None:
                    values.append(make(FeatureValue, (name, default, None, None, missing)))
                    worst = missing
                    continue
                event_time = float(stamp)
                age = now - event_time
                if oldest is None or age > oldest:
                    oldest = age
                if age > ttl:
                    values.append(
                        make(
                            FeatureValue,
                            (name, float(value) if serve_stale else default, event_time, age, stale),
                        )
                    )
                    if worst is ok:
                        worst = stale
                else:
                    values.append(make(FeatureValue, (name, float(value), event_time, age, ok)))
            counts[worst] += 1
            if oldest is not None:
                observe(oldest)
            results.append(EntityFeatures(entity_id, name_, version, tuple(values)))
        for status, count in counts.items():
            if count:
                self._reads[status].inc(count)
        return results

    def finish(
        self, results: list[EntityFeatures], policy: StalenessPolicy, started: float
    ) -> list[EntityFeatures]:
        self._seconds.observe(time.perf_counter() - started)
        if policy is StalenessPolicy.FAIL:
            bad = [e for e in results if not e.ok]
            if bad:
                detail = ", ".join(f"{e.entity_id}={e.status.name}" for e in bad[:10])
                raise FeaturesUnavailable(
                    f"{len(bad)} of {len(results)} entities have stale or missing features: {detail}",
                    entities=[e.entity_id for e in bad],
                )
        return results


def _now(now: Any) -> float:
    return time.time() if now is None else epoch_seconds(now)


class OnlineStore:
    """Synchronous online store (redis-py; hiredis parses replies when installed)."""

    def __init__(
        self,
        client: redis.Redis,
        feature_set: FeatureSet = TRANSACTION_FEATURES,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        key_ttl_s: float | None = 86_400.0,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the online store needs a client that returns bytes (decode_responses=False)")
        self._client = client
        self._layout = _Layout(feature_set, key_prefix, key_ttl_s)
        self._write = client.register_script(WRITE_SCRIPT)
        self.feature_set = feature_set

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, feature_set: FeatureSet = TRANSACTION_FEATURES, **kwargs: Any
    ) -> OnlineStore:
        client = redis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout_s)
        return cls(client, feature_set, **kwargs)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def key(self, entity_id: str) -> str:
        """The Redis key of an entity's hash."""
        return self._layout.key(entity_id)

    def read(
        self, entity_ids: Sequence[str], *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> list[EntityFeatures]:
        """Every entity's vector, in one pipelined round trip, judged fresh or stale as of ``now``.

        ``now``: epoch seconds or an aware datetime; the wall clock when None.
        """
        started = time.perf_counter()
        layout = self._layout
        if len(entity_ids) == 1:
            raws = [self._client.hgetall(layout.key(entity_ids[0]))]
        elif entity_ids:
            pipe = self._client.pipeline(transaction=False)
            for entity_id in entity_ids:
                pipe.hgetall(layout.key(entity_id))
            raws = pipe.execute()
        else:
            raws = []
        results = layout.parse_all(entity_ids, raws, _now(now), policy)
        return layout.finish(results, policy, started)

    def read_one(
        self, entity_id: str, *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> EntityFeatures:
        return self.read([entity_id], now=now, policy=policy)[0]

    def write(self, entity_id: str, values: Mapping[str, float] | Sequence[float], event_time: Any) -> int:
        """Write one entity's values as of ``event_time``; returns how many were newer and written."""
        return self.write_many([(entity_id, values, event_time)])[0]

    def write_many(
        self, writes: Sequence[FeatureWrite | tuple[str, Mapping[str, float] | Sequence[float], Any]]
    ) -> list[int]:
        """Write many entities in one round trip; each value only if not older than the stored one."""
        layout = self._layout
        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            entity_id = write.entity_id if isinstance(write, FeatureWrite) else write[0]
            self._write(keys=[layout.key(entity_id)], args=layout.write_args(write), client=pipe)
        return [int(n) for n in pipe.execute()] if writes else []

    def stage_writes(self, pipeline: redis.client.Pipeline, writes: Sequence[FeatureWrite]) -> None:
        """Queue guarded writes on the caller's pipeline, to commit them with its other commands."""
        layout = self._layout
        for write in writes:
            self._write(keys=[layout.key(write.entity_id)], args=layout.write_args(write), client=pipeline)

    def delete(self, entity_ids: Sequence[str]) -> int:
        return int(self._client.delete(*[self._layout.key(e) for e in entity_ids])) if entity_ids else 0

    def close(self) -> None:
        self._client.close()


class AsyncOnlineStore:
    """The same store for asyncio code (redis.asyncio), with the same semantics."""

    def __init__(
        self,
        client: aioredis.Redis,
        feature_set: FeatureSet = TRANSACTION_FEATURES,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        key_ttl_s: float | None = 86_400.0,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the online store needs a client that returns bytes (decode_responses=False)")
        self._client = client
        self._layout = _Layout(feature_set, key_prefix, key_ttl_s)
        self._write = client.register_script(WRITE_SCRIPT)
        self.feature_set = feature_set

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, feature_set: FeatureSet = TRANSACTION_FEATURES, **kwargs: Any
    ) -> AsyncOnlineStore:
        client = aioredis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout_s)
        return cls(client, feature_set, **kwargs)

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    def key(self, entity_id: str) -> str:
        return self._layout.key(entity_id)

    async def read(
        self, entity_ids: Sequence[str], *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> list[EntityFeatures]:
        """See :meth:`OnlineStore.read`."""
        started = time.perf_counter()
        layout = self._layout
        if len(entity_ids) == 1:
            raws = [await self._client.hgetall(layout.key(entity_ids[0]))]
        elif entity_ids:
            pipe = self._client.pipeline(transaction=False)
            for entity_id in entity_ids:
                pipe.hgetall(layout.key(entity_id))
            raws = await pipe.execute()
        else:
            raws = []
        results = layout.parse_all(entity_ids, raws, _now(now), policy)
        return layout.finish(results, policy, started)

    async def read_one(
        self, entity_id: str, *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> EntityFeatures:
        return (await self.read([entity_id], now=now, policy=policy))[0]

    async def write(
        self, entity_id: str, values: Mapping[str, float] | Sequence[float], event_time: Any
    ) -> int:
        return (await self.write_many([(entity_id, values, event_time)]))[0]

    async def write_many(
        self, writes: Sequence[FeatureWrite | tuple[str, Mapping[str, float] | Sequence[float], Any]]
    ) -> list[int]:
        layout = self._layout
        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            entity_id = write.entity_id if isinstance(write, FeatureWrite) else write[0]
            await self._write(keys=[layout.key(entity_id)], args=layout.write_args(write), client=pipe)
        return [int(n) for n in await pipe.execute()] if writes else []

    def write_args(self, write: FeatureWrite) -> list[str]:
        """ARGV of WRITE_SCRIPT for a write (event time, expiry, values): for scripts that embed
        GUARDED_WRITE_LUA, such as the stream's state script."""
        return self._layout.write_args(write)

    async def stage_writes(self, pipeline: aioredis.client.Pipeline, writes: Sequence[FeatureWrite]) -> None:
        """Queue guarded writes on the caller's pipeline, to commit them with its other commands."""
        layout = self._layout
        for write in writes:
            await self._write(
                keys=[layout.key(write.entity_id)], args=layout.write_args(write), client=pipeline
            )

    async def delete(self, entity_ids: Sequence[str]) -> int:
        return int(await self._client.delete(*[self._layout.key(e) for e in entity_ids])) if entity_ids else 0

    async def close(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]
