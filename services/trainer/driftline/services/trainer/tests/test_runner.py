from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftline.kit.errors import Aborted, Unavailable
from driftline.registry.v1 import registry_pb2
from driftline.services.trainer.convert import OnnxScorer
from driftline.services.trainer.gate import GateConfig
from driftline.services.trainer.runner import P_LABELS_UNTIL, RetrainRunner, RunnerConfig
from driftline.services.trainer.train import TrainParams
from driftline.services.trainer.triggers import Trigger, TriggerBatch

T0 = datetime(2025, 1, 1, tzinfo=UTC)
FAST = TrainParams(n_estimators=40)
CRIPPLED = TrainParams(n_estimators=1, num_leaves=2, learning_rate=0.05)


def batch(*ids: str, kind: str = "drift") -> TriggerBatch:
    return TriggerBatch(tuple(Trigger(kind, i, "fraud", time.time()) for i in ids))


def runner(world, registry, *, params=FAST, gate=None, horizon_s=1500) -> RetrainRunner:
    config = RunnerConfig(
        train=params, gate=gate or GateConfig(metric="auc", margin=0.01), code_revision="abc123"
    )
    return RetrainRunner(config, world.builder(horizon_s=horizon_s), registry)


def drifted_world(world, registry):
    """Champion v1 trained on the old fraud rule; then 2000 labelled events under a new rule."""
    world.add(2000, start_s=0, rule=0, seed=1, ingested_at=T0 + timedelta(hours=1))
    first = runner(world, registry).run(batch("initial"))
    assert first.promoted
    assert registry.champion() == 1
    world.add(2000, start_s=2000, rule=1, seed=2, ingested_at=T0 + timedelta(hours=2))
    return first


def test_better_challenger_is_registered_with_lineage_and_promoted(world, registry) -> None:
    drifted_world(world, registry)
    result = runner(world, registry).run(batch("report-7", "report-8"))

    assert result.promoted, result.reason
    assert registry.champion() == 2
    assert result.reason.startswith("wins: challenger auc=")
    assert result.metrics["holdout_auc"] >= result.metrics["champion_holdout_auc"] + 0.01
    mv = registry.get_version("fraud", version=2)
    assert mv.lineage.trigger == "drift"
    assert mv.lineage.trigger_id == "report-7"
    assert mv.lineage.parent_version == 1
    assert mv.lineage.data_hash == result.data_hash
    assert len(result.data_hash) == 64
    assert mv.lineage.code_revision == "abc123"
    assert mv.lineage.run_id == result.run_id
    assert mv.lineage.data_end.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=3999)
    assert mv.params["coalesced_triggers"] == "report-7,report-8"
    assert P_LABELS_UNTIL in mv.params
    assert list(mv.signature.feature_names) == ["f0", "f1", "f2", "f3"]
    assert [t.name for t in mv.signature.outputs] == ["probability", "label"]
    assert (mv.feature_set, mv.feature_set_version) == ("test_features", 1)
    # The reference sample's scores are the registered model's own scores on its rows.
    ref = mv.reference
    assert ref.rows == 500
    assert len(ref.values) == 500 * 4
    scores = OnnxScorer(registry.fetch_artifact("fraud", 2)).predict(np.array(ref.values).reshape(500, 4))
    np.testing.assert_allclose(scores, ref.scores, atol=1e-7)
    # The promotion is an audited compare-and-swap from the old champion, with the reason.
    promotion = registry.audit[-1]
    assert (promotion.action, promotion.version, promotion.previous_version) == ("set_alias", 2, 1)
    assert promotion.reason == result.reason
    run = registry.runs[-1]
    assert run.outcome == registry_pb2.RUN_OUTCOME_PROMOTED
    assert run.version == 2
    assert run.outcome_reason == result.reason
    assert run.data_hash == result.data_hash
    assert run.trigger_id == "report-7"
    assert run.duration_seconds > 0


def test_worse_challenger_is_registered_but_not_promoted_and_the_run_says_why(world, registry) -> None:
    world.add(3000, start_s=0, rule=1, seed=3, ingested_at=T0 + timedelta(hours=1))
    assert runner(world, registry).run(batch("initial")).promoted

    result = runner(world, registry, params=CRIPPLED, gate=GateConfig(metric="auc", margin=0.0)).run(
        batch("r1")
    )

    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert registry.champion() == 1
    assert result.version == 2  # registered for the record, never promoted
    run = registry.runs[-1]
    assert run.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert run.outcome_reason.startswith("refused: challenger auc=")
    assert "champion v1 auc=" in run.outcome_reason
    assert run.metrics["holdout_auc"] < run.metrics["champion_holdout_auc"]
    assert all(entry.alias != "champion" or entry.version == 1 for entry in registry.audit)


def test_winner_is_left_pending_under_manual_approval(world, registry) -> None:
    drifted_world(world, registry)
    result = runner(world, registry, gate=GateConfig(manual_approval=True)).run(batch("r1"))
    assert result.outcome == registry_pb2.RUN_OUTCOME_PENDING_APPROVAL
    assert registry.champion() == 1
    assert registry.aliases[("fraud", "challenger")] == 2
    assert "waiting for manual approval" in registry.runs[-1].outcome_reason


def test_champion_moved_during_the_run_is_not_overwritten(world, registry) -> None:
    drifted_world(world, registry)

    class Racing(type(registry)):  # type: ignore[misc]
        def set_alias(self, name, alias, version, expected_version, reason):
            raise Aborted("alias champion points at v9, not v1")

    racing = Racing(**{f.name: getattr(registry, f.name) for f in dataclasses.fields(registry)})
    result = runner(world, racing).run(batch("r1"))
    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert "champion moved from v1" in result.reason


def test_run_without_enough_labels_is_recorded_as_failed(world, registry) -> None:
    world.add(50, start_s=0, rule=0, seed=1)
    result = runner(world, registry).run(batch("r1"))
    assert result.outcome == registry_pb2.RUN_OUTCOME_FAILED
    assert "insufficient_data" in result.reason
    assert registry.runs[-1].outcome == registry_pb2.RUN_OUTCOME_FAILED
    assert registry.runs[-1].outcome_reason == result.reason
    assert not registry.versions


def test_unreachable_registry_fails_the_run_instead_of_promoting_blind(world, registry) -> None:
    drifted_world(world, registry)

    class Flaky(type(registry)):  # type: ignore[misc]
        def fetch_artifact(self, name, version):
            raise Unavailable("registry is down")

    flaky = Flaky(**{f.name: getattr(registry, f.name) for f in dataclasses.fields(registry)})
    result = runner(world, flaky).run(batch("r1"))
    assert result.outcome == registry_pb2.RUN_OUTCOME_FAILED
    assert "registry is down" in result.reason
    assert registry.champion() == 1


def test_corrupt_champion_artifact_does_not_block_a_good_challenger(world, registry) -> None:
    drifted_world(world, registry)
    registry.artifacts[("fraud", 1)] = b"not onnx"
    result = runner(world, registry).run(batch("r1"))
    assert result.promoted
    assert "champion v1 cannot be scored" in result.reason


def test_same_set_and_seed_train_the_same_model(world, registry) -> None:
    world.add(1500, start_s=0, rule=0, seed=1, ingested_at=T0 + timedelta(hours=1))
    first = runner(world, registry).run(batch("a"))
    second = runner(world, registry, gate=GateConfig(margin=0.0)).run(batch("b"))
    assert first.data_hash == second.data_hash
    v1, v2 = registry.get_version("fraud", version=1), registry.get_version("fraud", version=2)
    assert v1.artifact_sha256 == v2.artifact_sha256
    assert second.metrics["holdout_auc"] == pytest.approx(second.metrics["champion_holdout_auc"], abs=0)
