from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from driftline.services.trainer.triggers import (
    Debouncer,
    Offer,
    RetrainScheduler,
    Trigger,
    TriggerBatch,
    TriggerJournal,
)


def trig(tid: str, at: float, kind: str = "drift") -> Trigger:
    return Trigger(kind=kind, trigger_id=tid, model_name="fraud", received_at=at)


def test_triggers_within_the_window_coalesce_into_one_retrain() -> None:
    d = Debouncer(window_s=10)
    assert d.offer(trig("a", 0), now=0) is Offer.OPENED
    assert d.offer(trig("b", 4), now=4) is Offer.COALESCED
    assert d.offer(trig("c", 9), now=9) is Offer.COALESCED
    assert d.due(now=9.9) is None
    batch = d.due(now=10)
    assert batch is not None
    assert batch.ids == ["a", "b", "c"]
    assert batch.primary.trigger_id == "a"
    assert d.due(now=100) is None


def test_window_does_not_extend_with_each_trigger() -> None:
    d = Debouncer(window_s=10)
    for t in range(0, 10, 2):
        d.offer(trig(f"t{t}", t), now=t)
    batch = d.due(now=10)
    assert batch is not None
    assert len(batch.triggers) == 5


def test_triggers_during_a_retrain_queue_exactly_one_follow_up() -> None:
    d = Debouncer(window_s=10)
    d.offer(trig("a", 0), now=0)
    running = d.due(now=10)
    assert running is not None
    assert d.offer(trig("b", 11), now=11) is Offer.QUEUED
    assert d.offer(trig("c", 12), now=12) is Offer.QUEUED
    assert d.offer(trig("d", 30), now=30) is Offer.QUEUED
    assert d.due(now=40) is None  # one retrain at a time
    d.finish(now=50)
    follow_up = d.due(now=50)
    assert follow_up is not None
    assert follow_up.ids == ["b", "c", "d"]
    d.finish(now=60)
    assert d.due(now=1000) is None


def test_follow_up_waits_only_for_what_is_left_of_its_window() -> None:
    d = Debouncer(window_s=10)
    d.offer(trig("a", 0), now=0)
    d.due(now=10)
    d.offer(trig("b", 12), now=12)
    d.finish(now=15)
    assert d.due(now=21.9) is None
    assert d.due(now=22) is not None


def test_replayed_trigger_is_ignored() -> None:
    d = Debouncer(window_s=1)
    d.offer(trig("a", 0), now=0)
    assert d.offer(trig("a", 0.5), now=0.5) is Offer.DUPLICATE
    batch = d.due(now=1)
    assert batch is not None
    assert batch.ids == ["a"]
    d.finish(now=2)
    assert d.offer(trig("a", 3), now=3) is Offer.DUPLICATE
    assert d.due(now=100) is None


def test_scheduler_runs_one_retrain_at_a_time_and_coalesces_the_rest() -> None:
    started = threading.Event()
    release = threading.Event()
    ran: list[TriggerBatch] = []
    active = 0
    most_active = 0
    lock = threading.Lock()

    def run(batch: TriggerBatch) -> None:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
        started.set()
        release.wait(5)
        ran.append(batch)
        with lock:
            active -= 1

    scheduler = RetrainScheduler(Debouncer(window_s=0.05), run)
    scheduler.start()
    try:
        scheduler.submit(trig("a", time.time()))
        scheduler.submit(trig("b", time.time()))
        assert started.wait(5)
        for name in ("c", "d", "e"):
            assert scheduler.submit(trig(name, time.time())) is Offer.QUEUED
        release.set()
        assert scheduler.wait_idle(10)
    finally:
        scheduler.stop(5)
    assert [b.ids for b in ran] == [["a", "b"], ["c", "d", "e"]]
    assert most_active == 1


def test_a_crashing_retrain_does_not_stop_the_scheduler() -> None:
    ran: list[list[str]] = []

    def run(batch: TriggerBatch) -> None:
        ran.append(batch.ids)
        if batch.primary.trigger_id == "boom":
            raise RuntimeError("boom")

    scheduler = RetrainScheduler(Debouncer(window_s=0.01), run)
    scheduler.start()
    try:
        scheduler.submit(trig("boom", time.time()))
        assert scheduler.wait_idle(5)
        scheduler.submit(trig("ok", time.time()))
        assert scheduler.wait_idle(5)
    finally:
        scheduler.stop(5)
    assert ran == [["boom"], ["ok"]]


def test_pending_triggers_survive_a_restart_through_the_journal(tmp_path: Path) -> None:
    journal = TriggerJournal(tmp_path / "pending.json")
    first = RetrainScheduler(Debouncer(window_s=3600), lambda _b: None, journal=journal)
    first.start()
    first.submit(trig("a", time.time()))
    first.submit(trig("b", time.time(), kind="manual"))
    first.stop(5)

    ran: list[list[str]] = []
    second = RetrainScheduler(Debouncer(window_s=0.01), lambda b: ran.append(b.ids), journal=journal)
    second.start()
    try:
        assert second.wait_idle(5)
    finally:
        second.stop(5)
    assert ran == [["a", "b"]]
    assert journal.load() == []


def test_deferred_batch_stays_pending_and_runs_again_with_the_triggers_that_arrived_meanwhile() -> None:
    d = Debouncer(window_s=5, retry_s=15, max_defer_s=600)
    d.offer(trig("a", 0), now=0)
    first = d.due(now=5)
    assert first is not None
    assert (first.attempt, first.may_defer) == (1, True)
    assert d.offer(trig("b", 7), now=7) is Offer.QUEUED
    d.finish(now=8, deferred=True)
    assert [t.trigger_id for t in d.pending()] == ["a", "b"]  # still pending, so journaled
    assert d.offer(trig("c", 10), now=10) is Offer.COALESCED  # debounced into the waiting retry
    assert d.due(now=22.9) is None
    again = d.due(now=23)
    assert again is not None
    assert again.ids == ["a", "b", "c"]
    assert again.attempt == 2
    d.finish(now=24)
    assert d.pending() == []
    assert d.due(now=1000) is None


def test_deferral_stops_once_the_first_trigger_is_older_than_max_defer_s() -> None:
    d = Debouncer(window_s=5, retry_s=15, max_defer_s=30)
    d.offer(trig("a", 0), now=0)
    first = d.due(now=5)
    assert first is not None
    assert first.may_defer
    d.finish(now=6, deferred=True)
    last = d.due(now=21)
    assert last is not None
    assert (last.attempt, last.may_defer) == (2, False)  # a retry would start after 30 s
    d.finish(now=22, deferred=True)  # not deferrable: dropped like any finished run
    assert d.pending() == []
    assert d.due(now=1000) is None


def test_batches_are_never_deferrable_by_default() -> None:
    d = Debouncer(window_s=1)
    d.offer(trig("a", 0), now=0)
    batch = d.due(now=1)
    assert batch is not None
    assert not batch.may_defer
    d.finish(now=2, deferred=True)
    assert d.pending() == []


def test_scheduler_keeps_a_deferred_batch_journaled_until_it_runs_again(tmp_path: Path) -> None:
    journal = TriggerJournal(tmp_path / "pending.json")
    ran: list[tuple[list[str], int]] = []
    deferred_once = threading.Event()

    @dataclass
    class Outcome:
        deferred: bool

    def run(batch: TriggerBatch) -> Outcome:
        ran.append((batch.ids, batch.attempt))
        if len(ran) == 1:  # too few labels the first time only
            deferred_once.set()
            return Outcome(deferred=True)
        return Outcome(deferred=False)

    slow = RetrainScheduler(Debouncer(window_s=0.01, retry_s=3600, max_defer_s=7200), run, journal=journal)
    slow.start()
    try:
        slow.submit(trig("a", time.time()))
        assert deferred_once.wait(10)
        assert not slow.idle()
    finally:
        slow.stop(5)
    assert [t.trigger_id for t in journal.load()] == ["a"]

    # After a restart the journaled trigger runs again, and this time trains.
    resumed = RetrainScheduler(Debouncer(window_s=0.01, retry_s=0.01, max_defer_s=7200), run, journal=journal)
    resumed.start()
    try:
        assert resumed.wait_idle(10)
    finally:
        resumed.stop(5)
    assert [ids for ids, _ in ran] == [["a"], ["a"]]
    assert journal.load() == []


def test_a_journal_with_fields_of_another_version_still_loads(tmp_path: Path) -> None:
    # An earlier version journaled degradation triggers with their metric and threshold.
    path = tmp_path / "pending.json"
    path.write_text(
        '[{"kind": "degradation", "trigger_id": "d1", "model_name": "fraud", "received_at": 5.0,'
        ' "detail": "", "metric": "auc", "threshold": 0.85}]'
    )
    assert TriggerJournal(path).load() == [Trigger("degradation", "d1", "fraud", 5.0)]
