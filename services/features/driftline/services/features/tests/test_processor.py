from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from driftline.featurestore.aggregation import AddOutcome, replay
from driftline.featurestore.testing import SMALL_SET, event
from driftline.services.features.fakes import MemoryState
from driftline.services.features.processor import FeatureProcessor


async def test_batches_give_the_same_values_as_offline_replay() -> None:
    events = [
        event(f"e{i:03d}", 1000.0 + i * 1.5, float(i % 7), f"m{i % 4}", entity=f"c{i % 3}") for i in range(60)
    ]
    state = MemoryState()
    processor = FeatureProcessor(SMALL_SET, state, allowed_lateness_s=5.0)
    streamed = {}
    for start in range(0, 60, 7):
        for result in await processor.process(events[start : start + 7]):
            assert result.outcome is AddOutcome.ADDED
            assert result.computed is not None
            streamed[result.event.event_id] = result.computed.values
    offline = {e.event_id: c.values for e, c in replay(SMALL_SET, events)}
    assert streamed == offline
    last_per_entity = {e.entity_id: offline[e.event_id] for e in events}
    assert {k: v[1] for k, v in state.features.items()} == last_per_entity


async def test_late_events_are_counted_in_and_too_late_ones_dropped() -> None:
    state = MemoryState()
    processor = FeatureProcessor(SMALL_SET, state, allowed_lateness_s=5.0)
    await processor.process([event("a", 100.0, 1.0), event("b", 110.0, 2.0)])
    results = await processor.process([event("late", 106.0, 4.0), event("too-late", 104.0, 8.0)])
    assert [r.outcome for r in results] == [AddOutcome.LATE, AddOutcome.TOO_LATE]
    assert results[1].computed is None
    # Online value as of the newest event (110) now includes the late one: sum over (100, 110].
    t, values = state.features["c1"]
    assert t == 110.0
    assert dict(zip(SMALL_SET.feature_names, values, strict=True))["sum_10s"] == 6.0
    assert set(state.events["c1"]) == {"a", "b", "late"}


async def test_a_replayed_batch_changes_nothing() -> None:
    state = MemoryState()
    processor = FeatureProcessor(SMALL_SET, state, allowed_lateness_s=5.0)
    batch = [event(f"e{i}", 100.0 + i, float(i)) for i in range(10)]
    first = await processor.process(batch)
    snapshot = (dict(state.features), {k: dict(v) for k, v in state.events.items()})
    again = await processor.process(batch)
    assert [r.outcome for r in again] == [AddOutcome.DUPLICATE] * 10
    assert [r.computed for r in again] == [r.computed for r in first]  # vectors re-published identically
    assert (dict(state.features), {k: dict(v) for k, v in state.events.items()}) == snapshot


async def test_failed_save_never_leaves_unsaved_events_in_memory() -> None:
    state = MemoryState()
    processor = FeatureProcessor(SMALL_SET, state, allowed_lateness_s=5.0)
    await processor.process([event("a", 100.0, 1.0)])
    state.fail_save_next = 1
    batch = [event("b", 101.0, 2.0), event("c", 102.0, 3.0)]
    with pytest.raises(ConnectionError):
        await processor.process(batch)
    retried = await processor.process(batch)
    assert [r.outcome for r in retried] == [AddOutcome.ADDED, AddOutcome.ADDED]
    assert set(state.events["c1"]) == {"a", "b", "c"}


async def test_cached_histories_skip_reloads_until_invalidated() -> None:
    state = MemoryState()
    processor = FeatureProcessor(SMALL_SET, state, allowed_lateness_s=5.0)
    await processor.process([event("a", 100.0, 1.0)])
    await processor.process([event("b", 101.0, 1.0)])
    assert state.loads == 1
    # Another worker writes meanwhile (a rebalance); after invalidation we see its event.
    state.events["c1"]["x"] = event("x", 101.5, 100.0)
    processor.invalidate()
    result = await processor.process([event("c", 102.0, 1.0)])
    assert state.loads == 2
    assert result[0].computed is not None
    assert result[0].computed.as_dict(SMALL_SET)["sum_10s"] == 103.0  # a, b, x, c


async def test_freshness_is_observed_for_added_and_late_events_only() -> None:
    labels = {"feature_set": SMALL_SET.key}

    def observed(le: str) -> float:
        name = "driftline_features_freshness_seconds_bucket"
        return REGISTRY.get_sample_value(name, {**labels, "le": le}) or 0.0

    before = {le: observed(le) for le in ("10.0", "30.0", "+Inf")}
    processor = FeatureProcessor(SMALL_SET, MemoryState(), allowed_lateness_s=5.0, clock=lambda: 120.0)
    await processor.process([event("a", 100.0, 1.0), event("b", 110.0, 2.0)])
    await processor.process([event("late", 106.0, 4.0), event("too-late", 104.0, 8.0)])
    # Visible at 120: b after 10 s, late after 14 s, a after 20 s; the dropped event is not counted.
    assert {le: observed(le) - n for le, n in before.items()} == {"10.0": 1, "30.0": 3, "+Inf": 3}
