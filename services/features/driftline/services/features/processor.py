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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from driftline.featurestore.aggregation import AddOutcome, Computed, EntityHistory
from driftline.featurestore.definitions import FeatureSet
from driftline.featurestore.events import Event
from driftline.featurestore.online import FeatureWrite
from driftline.kit.metrics import observe_many
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
    """Processes batches; keeps the histories of the entities it owns in memory between batches.

    The cache is write-through: an entity's history is kept only after its state was saved, and
    every entity a failed batch touched is dropped, so memory never runs ahead of Redis. Call
    :meth:`invalidate` when partitions move (another worker may have written since).
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        state: StateStore,
        *,
        allowed_lateness_s: float = 30.0,
        max_cached_entities: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feature_set = feature_set
        self._state = state
        self._lateness = allowed_lateness_s
        self._clock = clock
        self._label = feature_set.key
        self._cache: OrderedDict[str, EntityHistory] = OrderedDict()
        self._max_cached = max_cached_entities
        self._generation = 0

    def invalidate(self) -> None:
        """Forget every cached history (after a rebalance): the next batch reloads from Redis."""
        self._generation += 1
        self._cache.clear()

    @property
    def cached_entities(self) -> int:
        return len(self._cache)

    async def process(self, events: Sequence[Event]) -> list[Processed]:
        """Process a batch; returns one result per event, in order. Raises on state errors."""
        generation = self._generation
        entity_ids = list(dict.fromkeys(e.entity_id for e in events))
        missing = [e for e in entity_ids if e not in self._cache]
        loaded = await self._state.load(missing) if missing else {}
        histories: dict[str, EntityHistory] = {}
        for entity_id in entity_ids:
            cached = self._cache.get(entity_id)
            if cached is None:
                state = loaded.get(entity_id) or EntityState(events=[], profile=None)
                cached = EntityHistory(
                    self.feature_set,
                    allowed_lateness_s=self._lateness,
                    events=state.events,
                    profile=state.profile,
                )
            histories[entity_id] = cached
        try:
            results, updates = self._apply(events, histories)
            await self._state.save(updates)
        except BaseException:
            # The histories may hold changes Redis does not: never keep them.
            for entity_id in entity_ids:
                self._cache.pop(entity_id, None)
            raise
        if generation == self._generation:  # no rebalance meanwhile: the histories are current
            for entity_id, history in histories.items():
                self._cache[entity_id] = history
                self._cache.move_to_end(entity_id)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        self._observe(results)
        return results

    def _apply(
        self, events: Sequence[Event], histories: dict[str, EntityHistory]
    ) -> tuple[list[Processed], list[StateUpdate]]:
        profiles_before = {e: h.profile for e, h in histories.items()}
        results: list[Processed] = []
        added: dict[str, list[Event]] = {e: [] for e in histories}
        # Each entity's last computed vector: usually the newest event's, reused as "latest".
        last: dict[str, Computed] = {}
        late = dict.fromkeys(histories, False)
        for event in events:
            history = histories[event.entity_id]
            outcome = history.add(event)
            computed = None
            if outcome is not AddOutcome.TOO_LATE:
                computed = history.values_for(event)
                last[event.entity_id] = computed
            if outcome in (AddOutcome.ADDED, AddOutcome.LATE):
                added[event.entity_id].append(event)
            if outcome is AddOutcome.LATE:
                late[event.entity_id] = True
            results.append(Processed(event, outcome, computed))

        updates = []
        for entity_id, history in histories.items():
            removed = history.prune()
            removed_ids = {e.event_id for e in removed}
            added_ids = {e.event_id for e in added[entity_id]}
            newest = history.newest
            if newest is None:
                continue
            previous = last.get(entity_id)
            # Reuse only if nothing (a late event) was inserted before it after it was computed.
            latest = (
                previous
                if previous is not None and previous.event_id == newest.event_id and not late[entity_id]
                else history.latest()
            )
            assert latest is not None
            profile = history.profile if history.profile != profiles_before[entity_id] else None
            updates.append(
                StateUpdate(
                    entity_id=entity_id,
                    added=[e for e in added[entity_id] if e.event_id not in removed_ids],
                    # Events added and pruned within this batch never reached Redis.
                    removed=[e for e in removed if e.event_id not in added_ids],
                    profile=profile,
                    features=FeatureWrite.from_computed(entity_id, latest),
                )
            )
        return results, updates

    def _observe(self, results: Sequence[Processed]) -> None:
        visible_at = self._clock()
        counts: dict[AddOutcome, int] = {}
        fresh: list[float] = []
        for result in results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            if result.outcome in (AddOutcome.ADDED, AddOutcome.LATE):
                fresh.append(max(0.0, visible_at - result.event.event_time))
        observe_many(metrics.FRESHNESS.labels(self._label), fresh)
        for outcome, count in counts.items():
            metrics.EVENTS.labels(self._label, outcome.value).inc(count)
        if counts.get(AddOutcome.LATE):
            metrics.LATE_EVENTS.labels(self._label, "accepted").inc(counts[AddOutcome.LATE])
        if counts.get(AddOutcome.TOO_LATE):
            metrics.LATE_EVENTS.labels(self._label, "dropped").inc(counts[AddOutcome.TOO_LATE])
