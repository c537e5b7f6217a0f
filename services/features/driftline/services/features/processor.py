"""The transport-free core: a batch of events in, per-event feature values out, state saved.

For each batch it loads the touched entities' state (one round trip), adds the events in arrival
order to each entity's :class:`~driftline.featurestore.aggregation.EntityHistory` (the same engine
the offline builder replays), computes every event's values as of that event, prunes, and saves
the state changes with the newest values in one transaction (one round trip). Replays and
rebalance duplicates are recognised by event id and change nothing; events later than the
allowed lateness are dropped and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from driftline.featurestore.aggregation import AddOutcome, Computed, EntityHistory
from driftline.featurestore.definitions import FeatureSet
from driftline.featurestore.events import Event
from driftline.featurestore.online import FeatureWrite
from driftline.services.features import metrics
from driftline.services.features.state import EntityState, StateUpdate


class StateStore(Protocol):
    async def load(self, entity_ids: Sequence[str]) -> dict[str, EntityState]: ...

    async def save(self, updates: Sequence[StateUpdate]) -> None: ...


@dataclass(frozen=True, slots=True)
class Processed:
    """One event's fate: its outcome and, unless dropped, its feature values as of itself."""

    event: Event
    outcome: AddOutcome
    computed: Computed | None


class FeatureProcessor:
    def __init__(
        self,
        feature_set: FeatureSet,
        state: StateStore,
        *,
        allowed_lateness_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feature_set = feature_set
        self._state = state
        self._lateness = allowed_lateness_s
        self._clock = clock
        self._label = feature_set.key

    async def process(self, events: Sequence[Event]) -> list[Processed]:
        """Process a batch; returns one result per event, in order. Raises on state errors."""
        entity_ids = list(dict.fromkeys(e.entity_id for e in events))
        loaded = await self._state.load(entity_ids)
        histories: dict[str, EntityHistory] = {}
        persisted_ids: dict[str, set[str]] = {}
        profiles_before = {}
        for entity_id in entity_ids:
            state = loaded.get(entity_id) or EntityState(events=[], profile=None)
            history = EntityHistory(
                self.feature_set,
                allowed_lateness_s=self._lateness,
                events=state.events,
                profile=state.profile,
            )
            histories[entity_id] = history
            persisted_ids[entity_id] = {e.event_id for e in state.events}
            profiles_before[entity_id] = history.profile

        results: list[Processed] = []
        added: dict[str, list[Event]] = {e: [] for e in entity_ids}
        for event in events:
            history = histories[event.entity_id]
            outcome = history.add(event)
            computed = None
            if outcome is not AddOutcome.TOO_LATE:
                computed = history.values_for(event)
            if outcome in (AddOutcome.ADDED, AddOutcome.LATE):
                added[event.entity_id].append(event)
            results.append(Processed(event, outcome, computed))

        updates = []
        for entity_id, history in histories.items():
            removed = history.prune()
            removed_ids = {e.event_id for e in removed}
            latest = history.latest()
            if latest is None:
                continue
            profile = history.profile if history.profile != profiles_before[entity_id] else None
            updates.append(
                StateUpdate(
                    entity_id=entity_id,
                    added=[e for e in added[entity_id] if e.event_id not in removed_ids],
                    removed=[e for e in removed if e.event_id in persisted_ids[entity_id]],
                    profile=profile,
                    features=FeatureWrite.from_computed(entity_id, latest),
                )
            )
        await self._state.save(updates)
        self._observe(results)
        return results

    def _observe(self, results: Sequence[Processed]) -> None:
        visible_at = self._clock()
        counts: dict[AddOutcome, int] = {}
        freshness = metrics.FRESHNESS.labels(self._label)
        for result in results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            if result.outcome in (AddOutcome.ADDED, AddOutcome.LATE):
                freshness.observe(max(0.0, visible_at - result.event.event_time))
        for outcome, count in counts.items():
            metrics.EVENTS.labels(self._label, outcome.value).inc(count)
        if counts.get(AddOutcome.LATE):
            metrics.LATE_EVENTS.labels(self._label, "accepted").inc(counts[AddOutcome.LATE])
        if counts.get(AddOutcome.TOO_LATE):
            metrics.LATE_EVENTS.labels(self._label, "dropped").inc(counts[AddOutcome.TOO_LATE])
