"""What a read returns: per-feature values with their event time, age and status."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from itertools import repeat
from typing import NamedTuple

import numpy as np

from driftline.features.v1 import features_pb2
from driftline.featurestore.aggregation import Computed
from driftline.featurestore.definitions import FeatureSet
from driftline.featurestore.events import epoch_seconds, to_datetime, to_timestamp
from driftline.kit.codec import length_delimited, timestamp_parts, varint
from driftline.kit.errors import FailedPrecondition


class FeatureStatus(IntEnum):
    """Same numbers as ``driftline.features.v1.FeatureStatus``."""

    OK = 1
    #: Older than the feature's ttl: never served as OK.
    STALE = 2
    #: No value stored for this entity.
    MISSING = 3


class StalenessPolicy(StrEnum):
    """What a read does with STALE and MISSING values."""

    #: Return stored values even when STALE (status says so); MISSING ones get the default.
    SERVE = "serve"
    #: Replace STALE and MISSING values with the feature's default (status still says so).
    DEFAULT = "default"
    #: Raise :class:`FeaturesUnavailable` when any value is STALE or MISSING.
    FAIL = "fail"


class FeaturesUnavailable(FailedPrecondition):
    """A read under the FAIL policy found STALE or MISSING values."""

    code = "features_unavailable"

    def __init__(self, message: str, *, entities: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.entities = tuple(entities)


class FeatureValue(NamedTuple):
    name: str
    value: float
    #: Event time (epoch seconds) of the newest event behind the value; None when MISSING.
    event_time: float | None
    #: Read time minus event time, in seconds; None when MISSING.
    age_seconds: float | None
    status: FeatureStatus

    @property
    def event_datetime(self) -> datetime | None:
        return None if self.event_time is None else to_datetime(self.event_time)


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    """One entity's feature vector as read, in the feature set's order."""

    entity_id: str
    feature_set: str
    version: int
    values: tuple[FeatureValue, ...]

    def vector(self, dtype: type = np.float64) -> np.ndarray:
        """The model input row (1-D, feature order); never NaN."""
        return np.array([v.value for v in self.values], dtype=dtype)

    @property
    def status(self) -> FeatureStatus:
        """The worst status of any value (MISSING > STALE > OK)."""
        return max((v.status for v in self.values), default=FeatureStatus.MISSING)

    @property
    def ok(self) -> bool:
        return all(v.status is FeatureStatus.OK for v in self.values)

    @property
    def max_age_seconds(self) -> float | None:
        ages = [v.age_seconds for v in self.values if v.age_seconds is not None]
        return max(ages) if ages else None

    @property
    def event_time(self) -> float | None:
        """Event time of the newest value, epoch seconds."""
        times = [v.event_time for v in self.values if v.event_time is not None]
        return max(times) if times else None

    def as_dict(self) -> dict[str, float]:
        return {v.name: v.value for v in self.values}

    def to_proto(self, event_id: str = "") -> features_pb2.FeatureVector:
        message = features_pb2.FeatureVector(
            entity_id=self.entity_id,
            feature_set=self.feature_set,
            feature_set_version=self.version,
            event_id=event_id,
        )
        for v in self.values:
            item = message.values.add(name=v.name, value=v.value, status=int(v.status))
            if v.event_time is not None:
                item.event_time.CopyFrom(to_timestamp(v.event_time))
                item.age_seconds = v.age_seconds or 0.0
        newest = self.event_time
        if newest is not None:
            message.event_time.CopyFrom(to_timestamp(newest))
        return message


#: FeatureStatus by its number, for building FeatureValues from a frame's status codes.
_STATUS_BY_CODE = {status.value: status for status in FeatureStatus}
_MISSING = FeatureStatus.MISSING
_MISSING_CODE = _MISSING.value


@dataclass(slots=True, eq=False)
class FeatureFrame:
    """Many entities' vectors as read, column-wise: what a model scores, without a Python object
    per value. Row ``i`` is ``entity_ids[i]``; columns follow ``names``.

    An entity's values share one event time (the store keeps one per entity), so times and ages
    are per row. A MISSING row has NaN time and age and holds the features' defaults; under the
    ``default`` policy a STALE value holds its default too (its status still says STALE).
    :meth:`entity` gives a row as :class:`EntityFeatures`, with the same values and statuses.

    Read-only by convention (not frozen: a frozen dataclass's ``__init__`` costs more than a
    one-entity read's parsing); :meth:`take` and :meth:`select` make new frames.
    """

    entity_ids: tuple[str, ...]
    feature_set: str
    version: int
    names: tuple[str, ...]
    #: (rows, features) float64.
    values: np.ndarray
    #: (rows,) float64: each entity's event time, epoch seconds; NaN when MISSING.
    event_times: np.ndarray
    #: (rows,) float64: read time minus event time, seconds; NaN when MISSING.
    ages: np.ndarray
    #: (rows, features) int8: FeatureStatus numbers.
    statuses: np.ndarray
    #: The rows whose every value is MISSING (the store holds nothing for the entity), ascending.
    missing: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.entity_ids)

    def take(self, rows: Sequence[int]) -> FeatureFrame:
        """The frame of these rows, in this order."""
        index = np.asarray(rows, dtype=np.intp)
        missing = set(self.missing)
        return FeatureFrame(
            tuple(self.entity_ids[i] for i in rows),
            self.feature_set,
            self.version,
            self.names,
            self.values[index],
            self.event_times[index],
            self.ages[index],
            self.statuses[index],
            tuple(j for j, i in enumerate(rows) if i in missing),
        )

    def select(self, columns: Sequence[int]) -> FeatureFrame:
        """The frame of these features, in this order."""
        index = np.asarray(columns, dtype=np.intp)
        return FeatureFrame(
            self.entity_ids,
            self.feature_set,
            self.version,
            tuple(self.names[k] for k in columns),
            self.values[:, index],
            self.event_times,
            self.ages,
            self.statuses[:, index],
            self.missing,
        )

    def feature_values(self, row: int) -> tuple[FeatureValue, ...]:
        """One entity's values as :class:`FeatureValue`s."""
        return self._rows(slice(row, row + 1))[0]

    def entity(self, row: int) -> EntityFeatures:
        return EntityFeatures(self.entity_ids[row], self.feature_set, self.version, self.feature_values(row))

    def entities(self) -> list[EntityFeatures]:
        """Every row as :class:`EntityFeatures` (what ``OnlineStore.read`` returns)."""
        name, version = self.feature_set, self.version
        rows = zip(self.entity_ids, self._rows(slice(None)), strict=True)
        return [EntityFeatures(entity_id, name, version, values) for entity_id, values in rows]

    def _rows(self, rows: slice) -> list[tuple[FeatureValue, ...]]:
        make, names, by_code = tuple.__new__, self.names, _STATUS_BY_CODE
        out = []
        for values, event_time, age, codes in zip(
            self.values[rows].tolist(),
            self.event_times[rows].tolist(),
            self.ages[rows].tolist(),
            self.statuses[rows].tolist(),
            strict=True,
        ):
            if event_time != event_time:  # NaN: MISSING, no time and no age
                event_time = age = None
            elif _MISSING_CODE in codes:  # a row of some missing values (built by from_entities)
                out.append(
                    tuple(
                        FeatureValue(n, v, None, None, FeatureStatus.MISSING)
                        if code == _MISSING_CODE
                        else FeatureValue(n, v, event_time, age, by_code[code])
                        for n, v, code in zip(names, values, codes, strict=True)
                    )
                )
                continue
            # The tuples are built in C, without a Python-level loop per value.
            fields = zip(names, values, repeat(event_time), repeat(age), map(by_code.__getitem__, codes))
            out.append(tuple(map(make, repeat(FeatureValue), fields)))
        return out

    @classmethod
    def from_entities(cls, entities: Sequence[EntityFeatures]) -> FeatureFrame:
        """The frame of vectors that share a feature set and its features (fakes and tests)."""
        if not entities:
            raise ValueError("a frame needs at least one entity")
        first = entities[0]
        names = tuple(v.name for v in first.values)
        times, ages = [], []
        for e in entities:
            if tuple(v.name for v in e.values) != names:
                raise ValueError(f"entity {e.entity_id} has other features than {first.entity_id}")
            known = [(v.event_time, v.age_seconds or 0.0) for v in e.values if v.event_time is not None]
            times.append(max((t for t, _ in known), default=math.nan))
            ages.append(max((a for _, a in known), default=math.nan))
        return cls(
            tuple(e.entity_id for e in entities),
            first.feature_set,
            first.version,
            names,
            np.array([[v.value for v in e.values] for e in entities], dtype=np.float64).reshape(
                len(entities), len(names)
            ),
            np.array(times, dtype=np.float64),
            np.array(ages, dtype=np.float64),
            np.array([[int(v.status) for v in e.values] for e in entities], dtype=np.int8).reshape(
                len(entities), len(names)
            ),
            tuple(i for i, e in enumerate(entities) if all(v.status is _MISSING for v in e.values)),
        )


def computed_to_proto(
    feature_set: FeatureSet, entity_id: str, computed: Computed, *, now: float | None = None
) -> features_pb2.FeatureVector:
    """The FeatureVector the stream publishes for an event (all values OK, as of that event)."""
    age = 0.0 if now is None else now - computed.event_time
    ts = to_timestamp(computed.event_time)
    message = features_pb2.FeatureVector(
        entity_id=entity_id,
        feature_set=feature_set.name,
        feature_set_version=feature_set.version,
        event_id=computed.event_id,
    )
    message.event_time.CopyFrom(ts)
    for name, value in zip(feature_set.feature_names, computed.values, strict=True):
        item = message.values.add(name=name, value=value, status=FeatureStatus.OK, age_seconds=age)
        item.event_time.CopyFrom(ts)
    return message


def _timestamp(seconds: float) -> bytes:
    """A ``google.protobuf.Timestamp``'s fields, as :func:`to_timestamp` sets them."""
    whole, rest = divmod(round(seconds * 1_000_000), 1_000_000)
    return timestamp_parts(whole, rest * 1000)


class VectorEncoder:
    """The serialized ``FeatureVector`` of :func:`computed_to_proto` (``now`` None: ages 0), built
    directly: the same bytes in a fraction of the time (the stream publishes one per event).

    Every value of a vector shares its tail (event time, status OK), so each feature's framing
    (tag, length, name, value tag) depends only on the tail's length: it is built once per length.
    """

    def __init__(self, feature_set: FeatureSet) -> None:
        self.feature_set = feature_set
        self._header = (
            length_delimited(0x12, feature_set.name.encode()) + b"\x18" + varint(feature_set.version)
        )
        self._names = [length_delimited(0x0A, name.encode()) for name in feature_set.feature_names]
        self._status = b"\x20" + varint(int(FeatureStatus.OK))
        self._framing: dict[int, list[tuple[bytes, bytes]]] = {}
        self._double = struct.Struct("<d").pack

    def _framing_for(self, tail: int) -> list[tuple[bytes, bytes]]:
        """Per feature: what precedes a non-zero value (then 8 bytes, then the tail), and what
        precedes the tail of a zero one (proto3 leaves 0.0 out)."""
        framing = self._framing.get(tail)
        if framing is None:
            framing = self._framing[tail] = [
                (
                    b"\x22" + varint(len(name) + 9 + tail) + name + b"\x11",
                    b"\x22" + varint(len(name) + tail) + name,
                )
                for name in self._names
            ]
        return framing

    def encode(self, entity_id: str, computed: Computed) -> bytes:
        stamp = _timestamp(computed.event_time)
        tail = length_delimited(0x1A, stamp) + self._status
        double, copysign = self._double, math.copysign
        parts = [length_delimited(0x0A, entity_id.encode()) if entity_id else b"", self._header]
        for (nonzero, zero), value in zip(self._framing_for(len(tail)), computed.values, strict=True):
            if value == 0.0 and copysign(1.0, value) > 0:
                parts += (zero, tail)
            else:
                parts += (nonzero, double(value), tail)
        parts.append(length_delimited(0x2A, stamp))
        if computed.event_id:
            parts.append(length_delimited(0x32, computed.event_id.encode()))
        return b"".join(parts)


def entity_features_from_proto(message: features_pb2.FeatureVector) -> EntityFeatures:
    """The read-side view of a published FeatureVector (for consumers of the vectors topic)."""
    values = []
    for item in message.values:
        has_time = item.HasField("event_time")
        event_time = epoch_seconds(item.event_time) if has_time else None
        values.append(
            FeatureValue(
                name=item.name,
                value=item.value,
                event_time=event_time,
                age_seconds=item.age_seconds if has_time else None,
                status=FeatureStatus(item.status) if item.status else FeatureStatus.MISSING,
            )
        )
    return EntityFeatures(
        entity_id=message.entity_id,
        feature_set=message.feature_set,
        version=message.feature_set_version,
        values=tuple(values),
    )
