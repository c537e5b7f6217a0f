"""The one aggregation engine: streaming and offline both compute features with this code.

An :class:`EntityHistory` holds one entity's events, ordered by (event time, event id), bounded to
what the feature set's windows and the allowed lateness can still need, plus the entity's profile
(first-seen values). The streaming path keeps one per entity (its events persisted in Redis) and
adds each event as it arrives; the offline path replays a history over sorted events
(:func:`replay`). Values are always recomputed from the buffered events with exact sums
(``math.fsum``), so they do not depend on arrival order or on how often state was reloaded:
the same events give bit-identical values in both paths.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from driftline.featurestore.definitions import (
    Aggregation,
    FeatureDefinition,
    FeatureSet,
    WindowType,
)
from driftline.featurestore.events import Event

#: Sorts after every real event id: "as of time t" includes every event at t.
_AFTER_ALL_IDS = "\U0010ffff"
#: Newest events always kept, whatever their age: ``last`` and ``time_since_last`` need them.
_KEEP_NEWEST = 2


class AddOutcome(StrEnum):
    ADDED = "added"
    #: Older than the newest event but within the allowed lateness: counted in.
    LATE = "late"
    #: Already in the history (a replay): nothing changes.
    DUPLICATE = "duplicate"
    #: Older than the newest event by more than the allowed lateness: dropped (and counted).
    TOO_LATE = "too_late"


@dataclass(frozen=True, slots=True)
class Computed:
    """Feature values as of one point: the newest event that contributed and the values in order."""

    event_time: float
    event_id: str
    values: tuple[float, ...]

    def as_dict(self, feature_set: FeatureSet) -> dict[str, float]:
        return dict(zip(feature_set.feature_names, self.values, strict=True))


@dataclass(frozen=True, slots=True)
class Profile:
    """First-seen values of an entity's profile fields, and the key of the event they came from."""

    event_time: float
    event_id: str
    values: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"t": self.event_time, "i": self.event_id, "v": dict(self.values)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        return cls(event_time=float(data["t"]), event_id=str(data["i"]), values=dict(data["v"]))


class EntityHistory:
    """One entity's bounded, ordered event buffer; computes its feature values as of any point."""

    def __init__(
        self,
        feature_set: FeatureSet,
        *,
        allowed_lateness_s: float = 0.0,
        events: Iterable[Event] = (),
        profile: Profile | None = None,
    ) -> None:
        if allowed_lateness_s < 0:
            raise ValueError("allowed lateness cannot be negative")
        self.feature_set = feature_set
        self.allowed_lateness_s = allowed_lateness_s
        self.retention_s = feature_set.retention_s(allowed_lateness_s)
        self.profile = profile
        self._plan = _plan_for(feature_set)
        self._raw_fields = sorted(
            {f.field for f in feature_set.features if f.field not in feature_set.derived}
        )
        self._derived_fields = sorted(
            {f.field for f in feature_set.features if f.field in feature_set.derived}
        )
        self._events: list[Event] = []
        self._keys: list[tuple[float, str]] = []
        self._times: list[float] = []
        self._ids: set[str] = set()
        self._columns: dict[str, list[Any]] = {name: [] for name in self._raw_fields + self._derived_fields}
        for event in sorted(events, key=lambda e: e.key):
            if event.event_id not in self._ids:
                self._update_profile(event)
                self._insert(event)
        if self._derived_fields:
            self._recompute_derived()

    # -- state ----------------------------------------------------------------------------------

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    @property
    def newest(self) -> Event | None:
        return self._events[-1] if self._events else None

    def add(self, event: Event) -> AddOutcome:
        """Add one event; duplicates and events beyond the allowed lateness change nothing."""
        if event.event_id in self._ids:
            return AddOutcome.DUPLICATE
        newest = self.newest
        late = newest is not None and event.key < newest.key
        if newest is not None and event.event_time < newest.event_time - self.allowed_lateness_s:
            return AddOutcome.TOO_LATE
        if self._update_profile(event) and self._derived_fields:
            self._insert(event)
            self._recompute_derived()
        else:
            self._insert(event)
        return AddOutcome.LATE if late else AddOutcome.ADDED

    def prune(self) -> list[Event]:
        """Drop events no window can need any more; return them. Keeps the newest two always."""
        if len(self._events) <= _KEEP_NEWEST:
            return []
        cutoff = self._times[-1] - self.retention_s
        count = min(bisect_left(self._times, cutoff), len(self._events) - _KEEP_NEWEST)
        if count <= 0:
            return []
        removed = self._events[:count]
        del self._events[:count]
        del self._keys[:count]
        del self._times[:count]
        for column in self._columns.values():
            del column[:count]
        for event in removed:
            self._ids.discard(event.event_id)
        return removed

    def _insert(self, event: Event) -> None:
        index = bisect_right(self._keys, event.key)
        if index == len(self._keys):
            self._keys.append(event.key)
            self._times.append(event.event_time)
            self._events.append(event)
        else:
            self._keys.insert(index, event.key)
            self._times.insert(index, event.event_time)
            self._events.insert(index, event)
        self._ids.add(event.event_id)
        for name in self._raw_fields:
            self._columns[name].insert(index, _field(event, name))
        profile_values = self.profile.values if self.profile else {}
        for name in self._derived_fields:
            self._columns[name].insert(index, self.feature_set.derived[name](event.fields, profile_values))

    def _update_profile(self, event: Event) -> bool:
        if not self.feature_set.profile_fields:
            return False
        if self.profile is not None and (self.profile.event_time, self.profile.event_id) <= event.key:
            return False
        self.profile = Profile(
            event_time=event.event_time,
            event_id=event.event_id,
            values={name: event.fields.get(name) for name in self.feature_set.profile_fields},
        )
        return True

    def _recompute_derived(self) -> None:
        profile_values = self.profile.values if self.profile else {}
        for name in self._derived_fields:
            derive = self.feature_set.derived[name]
            self._columns[name] = [derive(e.fields, profile_values) for e in self._events]

    # -- values ---------------------------------------------------------------------------------

    def at(self, event_time: float, event_id: str | None = None) -> Computed | None:
        """Feature values as of ``(event_time, event_id)``: every event up to it, inclusive.

        Without ``event_id``, every event at ``event_time`` counts. None when no event is that old.
        """
        end = bisect_right(self._keys, (event_time, _AFTER_ALL_IDS if event_id is None else event_id))
        if end == 0:
            return None
        values = self._plan.evaluate(self._columns, self._times, event_time, end)
        newest = self._events[end - 1]
        return Computed(event_time=newest.event_time, event_id=newest.event_id, values=values)

    def values_for(self, event: Event) -> Computed:
        """Feature values as of an event of this history (it included)."""
        computed = self.at(event.event_time, event.event_id)
        if computed is None or computed.event_id != event.event_id:
            raise KeyError(f"event {event.event_id} is not in the history of {event.entity_id}")
        return computed

    def latest(self) -> Computed | None:
        """Feature values as of the newest event: what the online store holds."""
        newest = self.newest
        return None if newest is None else self.at(newest.event_time, newest.event_id)


def _field(event: Event, name: str) -> Any:
    if name == "event_id":
        return event.event_id
    try:
        return event.fields[name]
    except KeyError:
        raise KeyError(f"event {event.event_id} has no field {name!r}") from None


def aggregate(
    feature: FeatureDefinition, column: Sequence[Any], times: Sequence[float], start: int, end: int
) -> float:
    """One feature's value over ``column[start:end]`` (events in the window, oldest first).

    The definition of every aggregation; :class:`_Plan` evaluates a whole feature set with the
    same arithmetic, sharing what features over the same window and field have in common.
    """
    n = end - start
    kind = feature.aggregation
    if kind is Aggregation.COUNT:
        return float(n)
    if kind is Aggregation.TIME_SINCE_LAST:
        return times[end - 1] - times[end - 2] if n >= 2 else feature.default
    if kind is Aggregation.DISTINCT_COUNT:
        return float(len(set(column[start:end])))
    if kind is Aggregation.SUM:
        return math.fsum(column[start:end])
    if n == 0:
        return feature.default
    if kind is Aggregation.LAST:
        return float(column[end - 1])
    values = column[start:end]
    if kind is Aggregation.MEAN:
        return math.fsum(values) / n
    if kind is Aggregation.STD:
        mean = math.fsum(values) / n
        return math.sqrt(math.fsum((x - mean) ** 2 for x in values) / n)
    if kind is Aggregation.MIN:
        return float(min(values))
    if kind is Aggregation.MAX:
        return float(max(values))
    raise ValueError(f"unknown aggregation {kind}")


_WINDOW_KINDS = {WindowType.SLIDING: 0, WindowType.TUMBLING: 1, WindowType.HOPPING: 2}


class _Plan:
    """A feature set compiled for evaluation: each distinct window's bounds are searched once per
    point, and features over the same window and field share its slice and its mean (mean and std
    of the amount over 10 minutes, say). Values equal :func:`aggregate`'s bit for bit: the same
    operations on the same numbers in the same order."""

    __slots__ = ("features", "windows")

    def __init__(self, feature_set: FeatureSet) -> None:
        self.windows: list[tuple[int, float, float]] = []
        self.features: list[tuple[Aggregation, str, int, float]] = []
        for feature in feature_set.features:
            index = -1
            if feature.window is not None:
                window = feature.window
                spec = (_WINDOW_KINDS[window.type], window.length_s, window.step_s)
                if spec not in self.windows:
                    self.windows.append(spec)
                index = self.windows.index(spec)
            self.features.append((feature.aggregation, feature.field, index, feature.default))

    def evaluate(
        self, columns: Mapping[str, list[Any]], times: list[float], t: float, end: int
    ) -> tuple[float, ...]:
        """Every feature as of ``t``, over the events ``[0, end)`` (those at or before the point)."""
        floor = math.floor
        starts = []
        # Window bounds exactly as Window.start computes them.
        for kind, length, step in self.windows:
            if kind == 0:
                starts.append(bisect_right(times, t - length, 0, end))
            elif kind == 1:
                starts.append(bisect_left(times, floor(t / length) * length, 0, end))
            else:
                starts.append(bisect_left(times, (floor((t - length) / step) + 1) * step, 0, end))
        fsum = math.fsum
        slices: dict[tuple[str, int], list[Any]] = {}
        means: dict[tuple[str, int], float] = {}
        out: list[float] = []
        for kind, field, window, default in self.features:
            start = starts[window] if window >= 0 else 0
            n = end - start
            if kind is Aggregation.COUNT:
                out.append(float(n))
                continue
            if kind is Aggregation.TIME_SINCE_LAST:
                out.append(times[end - 1] - times[end - 2] if n >= 2 else default)
                continue
            if kind is Aggregation.LAST:
                out.append(float(columns[field][end - 1]) if n else default)
                continue
            key = (field, window)
            values = slices.get(key)
            if values is None:
                values = slices[key] = columns[field][start:end]
            if kind is Aggregation.DISTINCT_COUNT:
                out.append(float(len(set(values))))
            elif kind is Aggregation.SUM:
                out.append(fsum(values))
            elif n == 0:
                out.append(default)
            elif kind is Aggregation.MEAN or kind is Aggregation.STD:
                mean = means.get(key)
                if mean is None:
                    mean = means[key] = fsum(values) / n
                if kind is Aggregation.MEAN:
                    out.append(mean)
                else:
                    out.append(math.sqrt(fsum([(x - mean) ** 2 for x in values]) / n))
            elif kind is Aggregation.MIN:
                out.append(float(min(values)))
            elif kind is Aggregation.MAX:
                out.append(float(max(values)))
            else:
                raise ValueError(f"unknown aggregation {kind}")
        return tuple(out)


#: One plan per feature set (by identity; a FeatureSet is not hashable), shared by every entity's
#: history: a plan is read-only, and compiling one per entity cost as much as the rest of it.
_PLANS: dict[int, tuple[FeatureSet, _Plan]] = {}


def _plan_for(feature_set: FeatureSet) -> _Plan:
    cached = _PLANS.get(id(feature_set))
    if cached is None or cached[0] is not feature_set:
        cached = _PLANS[id(feature_set)] = (feature_set, _Plan(feature_set))
    return cached[1]


def replay(feature_set: FeatureSet, events: Iterable[Event]) -> Iterator[tuple[Event, Computed]]:
    """Each event with the feature values as of it, computed offline the way the stream does.

    Events are processed in (event time, event id) order; duplicates (same event id for the same
    entity) are skipped. Output is in that order.
    """
    histories: dict[str, EntityHistory] = {}
    for event in sorted(events, key=lambda e: (e.event_time, e.event_id, e.entity_id)):
        history = histories.get(event.entity_id)
        if history is None:
            history = histories[event.entity_id] = EntityHistory(feature_set)
        if history.add(event) is AddOutcome.DUPLICATE:
            continue
        yield event, history.values_for(event)
        history.prune()
