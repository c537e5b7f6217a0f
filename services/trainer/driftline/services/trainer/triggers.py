"""Retrain triggers: what can start a retrain, and the debouncing that keeps retrains rare.

Three kinds of message start a retrain: a drift report whose status is DRIFT, a performance
degradation, and a manual retrain request. Bursts are common (several detectors fire on the same
shift), so triggers are coalesced:

* the first trigger opens a window of ``window_s``; every trigger that arrives before it closes
  joins the same batch, and one retrain runs for the whole batch when it closes;
* one retrain runs at a time; triggers that arrive during a retrain are coalesced into at most
  one follow-up batch, which runs (after its own window) once the retrain in flight finishes;
* a trigger id seen before (a replayed Kafka message) is ignored;
* a retrain that found too few labels (deferred) does not drop its batch: the batch waits
  ``retry_s`` and runs again, joined by any trigger that arrived meanwhile, for as long as its
  first trigger is younger than ``max_defer_s``; the attempt after that may no longer be deferred,
  and a shortage then fails the run like any other.

``Debouncer`` is the pure state machine (time is passed in). ``RetrainScheduler`` drives it from
a worker thread, and keeps the pending triggers in a small journal file so that triggers already
committed on Kafka survive a restart.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

log = structlog.get_logger(__name__)

#: Lineage trigger names, as Lineage.trigger and RetrainRequest.trigger spell them.
DRIFT = "drift"
DEGRADATION = "degradation"
MANUAL = "manual"
INITIAL = "initial"
REPRODUCE = "reproduce"


@dataclass(frozen=True)
class Trigger:
    """One reason to retrain."""

    kind: str
    trigger_id: str
    model_name: str
    #: Seconds since the epoch at which the trigger was received.
    received_at: float
    detail: str = ""


@dataclass(frozen=True)
class TriggerBatch:
    """Triggers coalesced into one retrain; the first one names the retrain in its lineage."""

    triggers: tuple[Trigger, ...]
    #: 1 for the first try of these triggers; a deferred batch comes back with the next number.
    attempt: int = 1
    #: Whether a shortage of labelled data may defer the retrain (False: it fails the run).
    may_defer: bool = False

    @property
    def primary(self) -> Trigger:
        return self.triggers[0]

    @property
    def ids(self) -> list[str]:
        return [t.trigger_id for t in self.triggers]


class Offer(enum.Enum):
    """What became of an offered trigger."""

    OPENED = "opened"  # started a new window
    COALESCED = "coalesced"  # joined the open window
    QUEUED = "queued"  # joined the follow-up of the retrain in flight
    DUPLICATE = "duplicate"  # seen before


@dataclass
class Debouncer:
    """Coalescing, one-at-a-time retrain scheduling, as a state machine over explicit times."""

    window_s: float
    remember: int = 10_000
    #: Wait before a deferred batch runs again.
    retry_s: float = 15.0
    #: A batch may be deferred while its first trigger is younger than this (0: never deferred).
    max_defer_s: float = 0.0
    _waiting: list[Trigger] = field(default_factory=list)
    _deadline: float | None = None
    _attempt: int = 1
    _running: TriggerBatch | None = None
    _follow_up: list[Trigger] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _seen_order: deque[str] = field(default_factory=deque)

    def offer(self, trigger: Trigger, now: float) -> Offer:
        if trigger.trigger_id in self._seen:
            return Offer.DUPLICATE
        self._remember(trigger.trigger_id)
        if self._running is not None:
            self._follow_up.append(trigger)
            return Offer.QUEUED
        if self._deadline is None:
            self._waiting = [trigger]
            self._deadline = now + self.window_s
            return Offer.OPENED
        self._waiting.append(trigger)
        return Offer.COALESCED

    def due(self, now: float) -> TriggerBatch | None:
        """The batch to run now, if its window has closed and nothing is running; marks it running."""
        if self._running is not None or self._deadline is None or now < self._deadline:
            return None
        # Deferrable only while another try would still start within max_defer_s of the first trigger.
        first = self._waiting[0].received_at
        may_defer = now + self.retry_s <= first + self.max_defer_s
        batch = TriggerBatch(tuple(self._waiting), attempt=self._attempt, may_defer=may_defer)
        self._waiting, self._deadline, self._running, self._attempt = [], None, batch, 1
        return batch

    def finish(self, now: float, *, deferred: bool = False) -> None:
        """The running retrain ended; the follow-up (if any) opens its window.

        ``deferred``: it found too few labels. A deferrable batch then waits ``retry_s`` and runs
        again, with the follow-up's triggers joining it (they would read the same labels).
        """
        running, self._running = self._running, None
        if deferred and running is not None and running.may_defer:
            self._waiting = [*running.triggers, *self._follow_up]
            self._follow_up = []
            self._deadline = now + self.retry_s
            self._attempt = running.attempt + 1
            return
        if self._follow_up:
            first = self._follow_up[0].received_at
            self._waiting, self._follow_up = self._follow_up, []
            # The follow-up's window counts from its first trigger, so it never waits twice.
            self._deadline = max(now, first + self.window_s)

    def next_deadline(self) -> float | None:
        return None if self._running is not None else self._deadline

    @property
    def running(self) -> TriggerBatch | None:
        return self._running

    def pending(self) -> list[Trigger]:
        """Every trigger not yet finished: running, waiting and follow-up, in arrival order."""
        running = list(self._running.triggers) if self._running else []
        return running + self._waiting + self._follow_up

    def _remember(self, trigger_id: str) -> None:
        self._seen.add(trigger_id)
        self._seen_order.append(trigger_id)
        while len(self._seen_order) > self.remember:
            self._seen.discard(self._seen_order.popleft())


class TriggerJournal:
    """The pending triggers, rewritten atomically on every change (a few hundred bytes)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> list[Trigger]:
        if not self._path.exists():
            return []
        try:
            rows = json.loads(self._path.read_text())
            # Fields of other versions are left out, so an older journal still loads.
            known = {f.name for f in dataclasses.fields(Trigger)}
            return [Trigger(**{k: v for k, v in row.items() if k in known}) for row in rows]
        except (ValueError, TypeError) as err:
            log.error("trigger_journal_unreadable", path=str(self._path), error=str(err))
            return []

    def save(self, triggers: list[Trigger]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(t) for t in triggers]))
        os.replace(tmp, self._path)


@runtime_checkable
class BatchOutcome(Protocol):
    """What a run may report back: whether it was deferred (its batch is to run again later)."""

    @property
    def deferred(self) -> bool: ...


#: Runs one batch; a returned ``BatchOutcome`` with ``deferred`` set keeps the batch pending.
RunBatch = Callable[[TriggerBatch], object]


class RetrainScheduler:
    """Runs ``run_batch`` for each debounced batch, one at a time, on a worker thread."""

    def __init__(
        self,
        debouncer: Debouncer,
        run_batch: RunBatch,
        *,
        journal: TriggerJournal | None = None,
        clock: Callable[[], float] = time.time,
        on_offer: Callable[[Trigger, Offer], None] | None = None,
    ) -> None:
        self._debouncer = debouncer
        self._run_batch = run_batch
        self._journal = journal
        self._clock = clock
        self._on_offer = on_offer
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.completed = 0

    def start(self) -> None:
        """Resume journaled triggers and start the worker thread."""
        if self._journal is not None:
            for trigger in self._journal.load():
                log.info("trigger_resumed", trigger_id=trigger.trigger_id, kind=trigger.kind)
                with self._cond:
                    self._debouncer.offer(trigger, self._clock())
        self._thread = threading.Thread(target=self._work, name="retrain-scheduler", daemon=True)
        self._thread.start()

    def submit(self, trigger: Trigger) -> Offer:
        """Hand a trigger over (thread-safe); it is journaled before this returns."""
        with self._cond:
            outcome = self._debouncer.offer(trigger, self._clock())
            if outcome is not Offer.DUPLICATE:
                self._save()
            self._cond.notify_all()
        log.info("trigger_received", trigger_id=trigger.trigger_id, kind=trigger.kind, outcome=outcome.value)
        if self._on_offer is not None:
            self._on_offer(trigger, outcome)
        return outcome

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop after the retrain in flight (if any) finishes."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def idle(self) -> bool:
        with self._cond:
            return not self._debouncer.pending()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no trigger is pending; True when that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._debouncer.pending():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = None
                while not self._stopping:
                    batch = self._debouncer.due(self._clock())
                    if batch is not None:
                        break
                    deadline = self._debouncer.next_deadline()
                    wait = None if deadline is None else max(0.0, deadline - self._clock())
                    self._cond.wait(wait if wait is None else min(wait, 1.0))
                if self._stopping:
                    return
            assert batch is not None
            deferred = False
            try:
                outcome = self._run_batch(batch)
                deferred = isinstance(outcome, BatchOutcome) and outcome.deferred is True
            except Exception:
                # The runner records its own failures; this guards the scheduler thread itself.
                log.exception("retrain_crashed", trigger_id=batch.primary.trigger_id)
            if deferred:
                log.info(
                    "retrain_deferred",
                    trigger_id=batch.primary.trigger_id,
                    attempt=batch.attempt,
                    retry_in_s=self._debouncer.retry_s,
                )
            with self._cond:
                self._debouncer.finish(self._clock(), deferred=deferred)
                self.completed += 1
                self._save()
                self._cond.notify_all()

    def _save(self) -> None:
        if self._journal is not None:
            self._journal.save(self._debouncer.pending())
