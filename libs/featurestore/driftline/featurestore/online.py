"""The online store: one small Redis hash per entity and feature set version.

Key ``{prefix}:{feature_set}:v{version}:{entity_id}`` (prefix ``dl:fs`` by default), two fields:
``t``, the event time of the newest event behind the values (epoch seconds, as Python's shortest
round-tripping repr), and ``d``, every value in the feature set's order as a little-endian IEEE
754 double (8 bytes each), as Feast's Redis store keeps serialized values rather than text: a
read unpacks an entity's 12 values in 0.3 µs, where parsing their reprs took 5 µs. One event
time per entity is exact, not a shortcut: a write always carries the whole vector as of one
event (the stream writes each entity's values as of its newest event).

Writes go through a Lua script that replaces both fields only when the stored event time is not
newer, so a replay never moves a value backwards, while an equal time rewrites (a late event
counted in changes the values as of the same newest event). A hash the previous version wrote,
with the values as text in a field ``v`` (space-separated reprs), still reads, and its next
write replaces ``v`` with ``d``, under the same rule: an upgrade loses no entity. A hash of the
older per-feature layout (fields ``{feature}`` and ``{feature}@t``) reads as MISSING and is
replaced whole by the first write. The key's Redis expiry is garbage collection only.

Reads send one ``HMGET key t d v`` per entity, any number of entities in one round trip, packed and
sent by :mod:`driftline.featurestore.requests` (redis-py's generic command path costs more client
time than Redis spends on the command). Freshness is judged on read: a value older than its
feature's ttl is STALE, never OK, whatever Redis still holds.
"""

from __future__ import annotations

import math
import struct
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram

from driftline.featurestore.aggregation import Computed
from driftline.featurestore.definitions import TRANSACTION_FEATURES, FeatureSet
from driftline.featurestore.events import epoch_seconds
from driftline.featurestore.requests import AsyncRequests, Requests
from driftline.featurestore.vectors import (
    EntityFeatures,
    FeatureFrame,
    FeatureStatus,
    FeaturesUnavailable,
    StalenessPolicy,
)
from driftline.kit.errors import InvalidArgument
from driftline.kit.metrics import observe_many
from driftline.kit.redis_clients import async_redis_client, redis_client
from driftline.kit.settings import RedisSettings

DEFAULT_KEY_PREFIX = "dl:fs"
#: The fields every read asks for, packed: the event time, the packed values, the text values.
_HMGET_TAIL = b"$1\r\nt\r\n$1\r\nd\r\n$1\r\nv\r\n"

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

# A Lua function other scripts embed (the stream's state script does): set the entity's event
# time and values unless the stored event time is newer. Returns 1 when written, else 0. Times
# travel as reprs and are compared as Lua numbers (doubles, like Python floats: exact); the
# values' bytes are never read in Lua, so no precision is lost.
GUARDED_WRITE_LUA = """
local function guarded_write(key, t_text, values, expire_ms)
  local old = redis.call('HGET', key, 't')
  if old then
    if tonumber(old) > tonumber(t_text) then
      return 0
    end
    -- the values as text, which an earlier version wrote: replaced by 'd' from now on
    redis.call('HDEL', key, 'v')
  else
    -- nothing stored yet, or a hash of the per-feature layout: start clean
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 't', t_text, 'd', values)
  if expire_ms ~= '0' then
    redis.call('PEXPIRE', key, expire_ms)
  end
  return 1
end
"""

# KEYS[1]: the entity hash. ARGV[1]: event time (epoch s); ARGV[2]: key expiry in ms (0: none);
# ARGV[3]: the values, packed doubles. Returns 1 when written, 0 when a newer one is stored.
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


def key_prefix_of(feature_set: FeatureSet, key_prefix: str = DEFAULT_KEY_PREFIX) -> str:
    """What every entity key of ``feature_set`` starts with; the entity id follows."""
    return f"{key_prefix}:{feature_set.name}:v{feature_set.version}:"


class _Layout:
    """Key format, encoding and read semantics shared by the sync and async stores."""

    def __init__(self, feature_set: FeatureSet, key_prefix: str, key_ttl_s: float | None) -> None:
        self.feature_set = feature_set
        self.prefix = key_prefix_of(feature_set, key_prefix)
        self._prefix_bytes = self.prefix.encode()
        self.names = feature_set.feature_names
        # Every value as a little-endian double, in the feature set's order (field ``d``).
        values = struct.Struct(f"<{len(self.names)}d")
        self._pack, self._unpack, self._packed_size = values.pack, values.unpack, values.size
        # An entity's values share one event time, so its age alone says which are stale: those
        # whose ttl is below it. The distinct ttls, ascending, cut the ages into steps; step k (k
        # ttls below the age) has its row of statuses worked out here, once.
        ttls = [f.ttl_s for f in feature_set.features]
        self._ttl_steps = sorted(set(ttls))
        self._status_table = np.array(
            [
                [FeatureStatus.STALE if ttl in self._ttl_steps[:k] else FeatureStatus.OK for ttl in ttls]
                for k in range(len(self._ttl_steps) + 1)
            ],
            dtype=np.int8,
        ).reshape(len(self._ttl_steps) + 1, len(ttls))
        self._names_tuple = tuple(self.names)
        # Defaults: what a MISSING row holds, and a STALE value under the `default` policy.
        self._defaults_row = np.array(feature_set.defaults, dtype=np.float64)
        self._missing_packed = self._pack(*feature_set.defaults)
        self.expire_ms = "0" if not key_ttl_s else str(int(key_ttl_s * 1000))
        self.label = feature_set.key
        self._age = FEATURE_AGE.labels(self.label)
        self._reads = {
            status: ENTITY_READS.labels(self.label, status.name.lower()) for status in FeatureStatus
        }
        self._seconds = READ_SECONDS.labels(self.label)

    def key(self, entity_id: str) -> str:
        return self.prefix + entity_id

    def read_request(self, entity_ids: Sequence[str]) -> bytes:
        """``HMGET key t d v`` of every entity, packed (``v``: the values as text, as hashes an
        earlier version wrote hold them until their next write)."""
        # The protocol's bytes written out (what hiredis.pack_command makes of the same command,
        # a unit test compares them), a third of the time of a pack call per entity.
        prefix = self._prefix_bytes
        keys = [prefix + entity_id.encode() for entity_id in entity_ids]
        return b"".join([b"*5\r\n$5\r\nHMGET\r\n$%d\r\n%b\r\n%b" % (len(k), k, _HMGET_TAIL) for k in keys])

    def write_args(
        self, write: FeatureWrite | tuple[str, Mapping[str, float] | Sequence[float], Any]
    ) -> list[str | bytes]:
        """ARGV of WRITE_SCRIPT: event time, key expiry (ms), the values (packed doubles)."""
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
        numbers = [float(v) for v in values]
        if not all(map(math.isfinite, numbers)):
            bad = next(i for i, x in enumerate(numbers) if not math.isfinite(x))
            raise InvalidArgument(f"feature {self.names[bad]} is {numbers[bad]}", code="not_finite")
        return [repr(float(event_time)), self.expire_ms, self._pack(*numbers)]

    def parse_frame(
        self,
        entity_ids: Sequence[str],
        raws: Sequence[Sequence[bytes | None]],
        now: float,
        policy: StalenessPolicy,
    ) -> FeatureFrame:
        """Judge every entity's ``[t, d, v]`` as of ``now``, column-wise; records the metrics.

        A row's packed doubles go into the frame as they are (one ``join`` for all rows), so an
        entity costs a few list appends here rather than a Python object per value.
        """
        size, width, missing_row = self._packed_size, len(self.names), self._missing_packed
        ttls, nan = self._ttl_steps, math.nan
        chunks: list[bytes] = []
        times: list[float] = []
        ages: list[float] = []
        observed: list[float] = []  # the found entities' ages
        steps: list[int] = []
        missing: list[int] = []
        for row, (stamp, packed, text) in enumerate(raws):
            try:
                # A time that is not a number (a foreign writer, a torn key) reads as missing,
                # like a key without one, rather than failing the whole read.
                event_time = float(stamp) if stamp is not None else None
            except ValueError:
                event_time = None
            if event_time is not None and packed is not None and len(packed) == size:
                chunks.append(packed)
            else:
                numbers = _text_values(text, width) if packed is None and text is not None else None
                if event_time is None or numbers is None:
                    missing.append(row)
                    chunks.append(missing_row)
                    times.append(nan)
                    ages.append(nan)
                    steps.append(0)
                    continue
                chunks.append(self._pack(*numbers))
            age = now - event_time
            times.append(event_time)
            ages.append(age)
            observed.append(age)
            # How many ttls the age is past: 0 (every value OK) for an age at or below the
            # shortest, and for a NaN age, as the comparisons `age > ttl` judged it before.
            steps.append(bisect_left(ttls, age))
        rows = len(times)
        if rows != len(entity_ids):
            raise ValueError(f"{rows} replies for {len(entity_ids)} entities")
        values = np.frombuffer(b"".join(chunks), dtype="<f8").reshape(rows, width)
        statuses = self._status_table[steps]
        stale = rows - steps.count(0)
        if missing:
            statuses[missing] = FeatureStatus.MISSING
        if stale and policy is not StalenessPolicy.SERVE:
            values = np.where(statuses == FeatureStatus.STALE, self._defaults_row, values)
        observe_many(self._age, observed)  # one histogram update per read, not per entity
        for status, count in (
            (FeatureStatus.OK, rows - stale - len(missing)),
            (FeatureStatus.STALE, stale),
            (FeatureStatus.MISSING, len(missing)),
        ):
            if count:
                self._reads[status].inc(count)
        return FeatureFrame(
            tuple(entity_ids),
            self.feature_set.name,
            self.feature_set.version,
            self._names_tuple,
            values,
            np.array(times, dtype=np.float64),
            np.array(ages, dtype=np.float64),
            statuses,
            tuple(missing),
        )

    def finish(self, frame: FeatureFrame, policy: StalenessPolicy, started: float) -> FeatureFrame:
        self._seconds.observe(time.perf_counter() - started)
        if policy is StalenessPolicy.FAIL:
            bad = np.flatnonzero((frame.statuses != FeatureStatus.OK).any(axis=1))
            if len(bad):
                # Each entity by its worst status (MISSING > STALE).
                shown = bad[:10].tolist()
                worst = frame.statuses[shown].max(axis=1).tolist()
                ids = frame.entity_ids
                pairs = zip(shown, worst, strict=True)
                detail = ", ".join(f"{ids[i]}={FeatureStatus(w).name}" for i, w in pairs)
                raise FeaturesUnavailable(
                    f"{len(bad)} of {len(frame)} entities have stale or missing features: {detail}",
                    entities=[frame.entity_ids[i] for i in bad],
                )
        return frame

    def written(self, replies: Sequence[Any]) -> list[int]:
        """WRITE_SCRIPT replies (1 or 0) as the number of values written."""
        size = len(self.names)
        return [size if int(n) else 0 for n in replies]


def _text_values(text: bytes, count: int) -> tuple[float, ...] | None:
    """The values of a hash an earlier version wrote (field ``v``: space-separated reprs), or
    None when they are not ``count`` numbers."""
    parts = text.split(b" ")
    if len(parts) != count:
        return None
    try:
        return tuple(map(float, parts))
    except ValueError:
        return None


def _now(now: Any) -> float:
    return time.time() if now is None else epoch_seconds(now)


class OnlineStore:
    """Synchronous online store (redis-py; hiredis parses replies when installed). Thread-safe."""

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
        self._requests = Requests(client)
        self.feature_set = feature_set

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, feature_set: FeatureSet = TRANSACTION_FEATURES, **kwargs: Any
    ) -> OnlineStore:
        client = redis_client(settings)
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
        """Every entity's vector, in one round trip, judged fresh or stale as of ``now``.

        ``now``: epoch seconds or an aware datetime; the wall clock when None.
        """
        return self.read_frame(entity_ids, now=now, policy=policy).entities()

    def read_frame(
        self, entity_ids: Sequence[str], *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> FeatureFrame:
        """The same read, column-wise (:class:`FeatureFrame`): no Python object per value."""
        started = time.perf_counter()
        layout = self._layout
        raws: Sequence[Sequence[bytes | None]] = []
        if entity_ids:
            raws = self._requests.send(layout.read_request(entity_ids), len(entity_ids))
        return layout.finish(layout.parse_frame(entity_ids, raws, _now(now), policy), policy, started)

    def read_one(
        self, entity_id: str, *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> EntityFeatures:
        return self.read([entity_id], now=now, policy=policy)[0]

    def write(self, entity_id: str, values: Mapping[str, float] | Sequence[float], event_time: Any) -> int:
        """Write one entity's values as of ``event_time``; returns how many were newer and written
        (all of them or none)."""
        return self.write_many([(entity_id, values, event_time)])[0]

    def write_many(
        self, writes: Sequence[FeatureWrite | tuple[str, Mapping[str, float] | Sequence[float], Any]]
    ) -> list[int]:
        """Write many entities in one round trip; each only if not older than the stored values."""
        if not writes:
            return []
        layout = self._layout
        # The context gives the pipeline's connection back to the pool even when a command fails.
        with self._client.pipeline(transaction=False) as pipe:
            for write in writes:
                entity_id = write.entity_id if isinstance(write, FeatureWrite) else write[0]
                self._write(keys=[layout.key(entity_id)], args=layout.write_args(write), client=pipe)
            return layout.written(pipe.execute())

    def stage_writes(self, pipeline: redis.client.Pipeline, writes: Sequence[FeatureWrite]) -> None:
        """Queue guarded writes on the caller's pipeline, to commit them with its other commands."""
        layout = self._layout
        for write in writes:
            self._write(keys=[layout.key(write.entity_id)], args=layout.write_args(write), client=pipeline)

    def delete(self, entity_ids: Sequence[str]) -> int:
        return int(self._client.delete(*[self._layout.key(e) for e in entity_ids])) if entity_ids else 0

    def close(self) -> None:
        self._requests.close()
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
        self._requests = AsyncRequests(client)
        self.feature_set = feature_set

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, feature_set: FeatureSet = TRANSACTION_FEATURES, **kwargs: Any
    ) -> AsyncOnlineStore:
        client = async_redis_client(settings)
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
        return (await self.read_frame(entity_ids, now=now, policy=policy)).entities()

    async def read_frame(
        self, entity_ids: Sequence[str], *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> FeatureFrame:
        """See :meth:`OnlineStore.read_frame`."""
        started = time.perf_counter()
        layout = self._layout
        raws: Sequence[Sequence[bytes | None]] = []
        if entity_ids:
            raws = await self._requests.send(layout.read_request(entity_ids), len(entity_ids))
        return layout.finish(layout.parse_frame(entity_ids, raws, _now(now), policy), policy, started)

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
        if not writes:
            return []
        layout = self._layout
        async with self._client.pipeline(transaction=False) as pipe:
            for write in writes:
                entity_id = write.entity_id if isinstance(write, FeatureWrite) else write[0]
                await self._write(keys=[layout.key(entity_id)], args=layout.write_args(write), client=pipe)
            return layout.written(await pipe.execute())

    def write_args(self, write: FeatureWrite) -> list[str | bytes]:
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
        await self._requests.close()
        await self._client.aclose()  # type: ignore[attr-defined]
