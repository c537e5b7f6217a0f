"""What a read returns: per-feature values with their event time, age and status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import NamedTuple

import numpy as np

from driftline.features.v1 import features_pb2
from driftline.featurestore.aggregation import Computed
from driftline.featurestore.definitions import FeatureSet
from driftline.featurestore.events import epoch_seconds, to_datetime, to_timestamp
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
