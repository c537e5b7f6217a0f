"""The trainer over the real feature store: point-in-time joins, bootstrap, drift retrain, reproduce."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from driftline.featurestore.aggregation import EntityHistory
from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.offline import OfflineStore, materialize
from driftline.featurestore.testing import SMALL_SET, event
from driftline.registry.v1 import registry_pb2
from driftline.services.trainer.bootstrap import (
    simulate,
    train_initial,
    write_features,
    write_history,
    write_labels,
)
from driftline.services.trainer.dataset import DatasetBuilder
from driftline.services.trainer.errors import ReproductionMismatch
from driftline.services.trainer.fakes import InMemoryRegistry
from driftline.services.trainer.features import OfflineFeatureSource
from driftline.services.trainer.gate import GateConfig
from driftline.services.trainer.labels import LabelLog, LabelRecord
from driftline.services.trainer.reproduce import reproduce
from driftline.services.trainer.runner import RetrainRunner, RunnerConfig
from driftline.services.trainer.train import TrainParams
from driftline.services.trainer.triggers import Trigger, TriggerBatch
from driftline.simulator import SimulatorConfig

T0 = datetime(2025, 1, 1, tzinfo=UTC).timestamp()


def test_offline_join_gives_each_label_the_features_as_of_its_event_never_later(tmp_path: Path) -> None:
    events = [
        event("e1", T0 + 1, 10.0),
        event("e2", T0 + 3, 20.0),
        event("e3", T0 + 8, 40.0),
        event("e4", T0 + 30, 1000.0),  # after every label: must never be read
        event("x1", T0 + 2, 5.0, entity="c2"),
    ]
    store = OfflineStore(tmp_path / "offline", SMALL_SET)
    store.append(materialize(SMALL_SET, events))
    labels = LabelLog(tmp_path / "labels")
    when = lambda s: datetime.fromtimestamp(T0 + s, tz=UTC)  # noqa: E731
    labels.append(
        [
            LabelRecord("c1", "e2", 1, when(3), when(10)),
            LabelRecord("c1", "e3", 0, when(8), when(10)),
            LabelRecord("c2", "x1", 0, when(2), when(10)),
        ],
        ingested_at=when(100),
    )
    builder = DatasetBuilder(labels, OfflineFeatureSource(store), horizon=timedelta(hours=1), min_rows=1)
    ts = builder.build(when(0), when(20), when(100))

    history = EntityHistory(SMALL_SET, events=[e for e in events if e.entity_id == "c1"])
    expected_e2 = history.at(T0 + 3).values  # e1 and e2 only
    expected_e3 = history.at(T0 + 8).values  # e1..e3, never e4
    frame = ts.frame.set_index("event_id")
    assert tuple(frame.loc["e2", SMALL_SET.feature_names]) == expected_e2
    assert tuple(frame.loc["e3", SMALL_SET.feature_names]) == expected_e3
    assert frame.loc["e3", "sum_10s"] == 70.0  # 10 + 20 + 40 in (t-10, t]; the 1000 is in the future
    assert frame.loc["x1", "last_amount"] == 5.0


def test_labels_whose_entity_has_no_features_are_dropped(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path / "offline", SMALL_SET)
    store.append(materialize(SMALL_SET, [event("e1", T0 + 1, 10.0)]))
    labels = LabelLog(tmp_path / "labels")
    at = datetime.fromtimestamp(T0 + 1, tz=UTC)
    labels.append([LabelRecord("c1", "e1", 1, at, at), LabelRecord("ghost", "g1", 0, at, at)])
    ts = DatasetBuilder(
        labels, OfflineFeatureSource(store), horizon=timedelta(hours=1), min_rows=1
    ).build_recent()
    assert ts.frame["event_id"].tolist() == ["e1"]
    assert ts.dropped_rows == 1


@pytest.fixture
def stack(tmp_path: Path) -> tuple[OfflineStore, LabelLog, DatasetBuilder, InMemoryRegistry, RetrainRunner]:
    store = OfflineStore(tmp_path / "offline", TRANSACTION_FEATURES)
    labels = LabelLog(tmp_path / "labels")
    dataset = DatasetBuilder(
        labels, OfflineFeatureSource(store), horizon=timedelta(seconds=150), min_rows=500
    )
    registry = InMemoryRegistry()
    config = RunnerConfig(train=TrainParams(n_estimators=60), gate=GateConfig(metric="auc", margin=0.01))
    return store, labels, dataset, registry, RetrainRunner(config, dataset, registry)


def test_bootstrap_promotes_a_first_champion_that_reproduces_exactly(stack) -> None:
    store, labels, dataset, registry, runner = stack
    run_id, events = simulate(SimulatorConfig(seed=11), 5000)
    history = write_history(store, labels, events, run_id=run_id)
    result = train_initial(runner, dataset, history)

    assert result.promoted, result.reason
    assert registry.champion() == 1
    mv = registry.get_version("fraud", version=1)
    assert mv.lineage.trigger == "initial"
    assert mv.lineage.trigger_id == f"initial-{run_id}"
    assert (mv.feature_set, mv.feature_set_version) == ("card_transactions", 1)
    assert list(mv.signature.feature_names) == TRANSACTION_FEATURES.feature_names
    assert result.metrics["holdout_auc"] > 0.9  # the simulator's fraud is learnable from these features
    assert result.metrics["train_rows"] + result.metrics["holdout_rows"] == 5000

    # Newer labels and features (a later stream) must not change what v1 reproduces from.
    _, later = simulate(SimulatorConfig(seed=12, start=history.end + timedelta(seconds=1)), 500)
    write_features(store, later)
    write_labels(labels, later)
    again = reproduce(registry, dataset, "fraud", 1)
    assert again.data_hash == mv.lineage.data_hash
    assert again.rows == 5000
    assert again.max_abs_diff == 0.0
    assert again.identical_artifact


def test_reproduce_refuses_when_the_training_data_changed(stack) -> None:
    store, labels, dataset, registry, runner = stack
    run_id, events = simulate(SimulatorConfig(seed=11), 3000)
    history = write_history(store, labels, events, run_id=run_id)
    assert train_initial(runner, dataset, history).promoted
    # Rewrite history: the offline store keeps the last write of an event, here with other values.
    tampered = materialize(TRANSACTION_FEATURES, [])
    first = store.read().iloc[:50].copy()
    first["amount"] = first["amount"] + 1.0
    store.append(pd.concat([tampered, first]))
    with pytest.raises(ReproductionMismatch, match="hashes"):
        reproduce(registry, dataset, "fraud", 1)


def test_concept_drift_retrain_beats_the_old_champion_and_is_promoted(stack) -> None:
    store, labels, dataset, registry, runner = stack
    config = SimulatorConfig(seed=5, concept_drift_at=4000)
    run_id, events = simulate(config, 8000)
    before, after = events[:4000], events[4000:]
    write_features(store, events)  # the features service saw the whole stream
    history = write_history(store, labels, before, run_id=run_id)
    assert train_initial(runner, dataset, history).promoted

    write_labels(labels, after)  # feedback for the drifted part arrives
    result = runner.run(TriggerBatch((Trigger("drift", "rep-42", "fraud", time.time()),)))

    assert result.promoted, result.reason
    assert registry.champion() == 2
    assert result.metrics["holdout_auc"] >= result.metrics["champion_holdout_auc"] + 0.01
    assert result.data_start is not None
    assert result.data_start > events[4000].event_time
    assert registry.runs[-1].outcome == registry_pb2.RUN_OUTCOME_PROMOTED
