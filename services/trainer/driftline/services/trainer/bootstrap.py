"""``driftline train --initial``: generated history -> offline store + label log -> the first champion.

A new stack has no labelled history, so the bootstrap makes some with the simulator: it computes
each event's features with the feature store's own aggregation engine (``materialize``, the
code the features service runs), appends them to the shared offline store, appends the labels
to the trainer's label log, and trains over exactly that range. The resulting version is an
ordinary one: its lineage names the range, the content hash and the trigger ``initial``, so
``--reproduce`` can rebuild it like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from driftline.featurestore.events import transaction_event_from_mapping
from driftline.featurestore.offline import OfflineStore, materialize
from driftline.kit.codec import utcnow
from driftline.services.trainer.dataset import DatasetBuilder
from driftline.services.trainer.labels import LabelLog, LabelRecord
from driftline.services.trainer.runner import RetrainRunner, RunResult
from driftline.services.trainer.triggers import INITIAL
from driftline.simulator import SimEvent, SimulatorConfig, TransactionSimulator

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class History:
    """What was written: the event-time range and the counts."""

    start: datetime
    end: datetime
    events: int
    frauds: int
    labels_ingested_at: datetime
    run_id: str = ""


def simulate(config: SimulatorConfig, n_events: int) -> tuple[str, list[SimEvent]]:
    """The simulator's run id and its first ``n_events`` events."""
    simulator = TransactionSimulator(config)
    return simulator.run_id, list(simulator.events(n_events))


def write_features(store: OfflineStore, events: Sequence[SimEvent]) -> int:
    """Compute every event's features with the shared engine and append them to the offline store."""
    engine_events = [transaction_event_from_mapping({**e.event, "event_time": e.event_time}) for e in events]
    rows = materialize(store.feature_set, engine_events)
    store.append(rows)
    return len(rows)


def write_labels(labels: LabelLog, events: Sequence[SimEvent], *, ingested_at: datetime | None = None) -> int:
    """Append the events' ground truth to the label log, as the feedback consumer would."""
    return labels.append(
        [
            LabelRecord(e.card_id, e.event_id, e.label, e.event_time, e.label_time, f"fb-{e.event_id}")
            for e in events
        ],
        ingested_at=ingested_at,
    )


def write_history(
    store: OfflineStore, labels: LabelLog, events: Sequence[SimEvent], *, run_id: str = ""
) -> History:
    """Features and labels of a simulated history, written where a retrain reads them."""
    if not events:
        raise ValueError("no events to write")
    moment = utcnow()
    rows = write_features(store, events)
    write_labels(labels, events, ingested_at=moment)
    history = History(
        start=min(e.event_time for e in events),
        end=max(e.event_time for e in events),
        events=len(events),
        frauds=sum(e.label for e in events),
        labels_ingested_at=moment,
        run_id=run_id,
    )
    log.info(
        "history_written",
        events=history.events,
        frauds=history.frauds,
        feature_rows=rows,
        start=history.start.isoformat(),
        end=history.end.isoformat(),
    )
    return history


def train_initial(
    runner: RetrainRunner, dataset: DatasetBuilder, history: History, *, warmup_s: float = 0.0
) -> RunResult:
    """Train and register over the history's range; promoted when there is no champion.

    The first ``warmup_s`` of history are left out of the training set: their windows are not
    full yet (every card is new), so their features look like no steady-state traffic and would
    make the reference sample, and so the drift detectors, disagree with live traffic.
    """
    start = history.start + timedelta(seconds=warmup_s)
    if start >= history.end:
        raise ValueError(f"history shorter than its {warmup_s:.0f}s warm-up")
    return runner.run_with(
        lambda: dataset.build(start, history.end, history.labels_ingested_at),
        trigger=INITIAL,
        trigger_id=f"initial-{history.run_id or history.start.isoformat()}",
    )
