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
from driftline.services.trainer.runner import (
    P_LABELS_UNTIL,
    RetrainRunner,
    RunnerConfig,
    RunResult,
    best_f1_threshold,
    fit_challenger,
    out_of_fold_scores,
    served_threshold,
)
from driftline.services.trainer.train import TrainParams
from driftline.services.trainer.triggers import (
    DEGRADATION,
    Debouncer,
    RetrainScheduler,
    Trigger,
    TriggerBatch,
    TriggerJournal,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
FAST = TrainParams(n_estimators=40)
CRIPPLED = TrainParams(n_estimators=1, num_leaves=2, learning_rate=0.05)


def batch(*ids: str, kind: str = "drift", may_defer: bool = False, attempt: int = 1) -> TriggerBatch:
    triggers = tuple(Trigger(kind, i, "fraud", time.time()) for i in ids)
    return TriggerBatch(triggers, attempt=attempt, may_defer=may_defer)


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
    # The operating point was checked too: recall at each model's own threshold, same rows.
    assert "challenger recall=" in result.reason
    assert result.metrics["holdout_recall_at_threshold"] > 0
    assert (
        result.metrics["holdout_recall_at_threshold"]
        >= result.metrics["champion_holdout_recall_at_threshold"] - 0.10
    )
    assert result.metrics["champion_decision_threshold"] == float(
        registry.get_version("fraud", version=1).params["decision_threshold"]
    )
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
    assert mv.params["gate_max_recall_drop"] == "0.1"
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


def test_retention_archives_idle_versions_past_the_newest_kept(world, registry) -> None:
    world.add(3000, start_s=0, rule=1, seed=3, ingested_at=T0 + timedelta(hours=1))
    assert runner(world, registry).run(batch("initial")).promoted
    refusing = runner(world, registry, params=CRIPPLED, gate=GateConfig(metric="auc", margin=0.0))
    keeping_one = dataclasses.replace(refusing.config, keep_idle_versions=1)
    refusing = RetrainRunner(keeping_one, world.builder(horizon_s=1500), registry)

    archived = [refusing.run(batch(f"r{i}")).archived for i in range(4)]

    # v1 stays champion; refused challengers take no alias: the newest one of them stays live.
    assert [r.version for r in registry.runs] == [1, 2, 3, 4, 5]
    assert archived == [[], [2], [3], [4]]
    assert registry.archived == {("fraud", 2), ("fraud", 3), ("fraud", 4)}
    assert registry.champion() == 1
    entries = [e for e in registry.audit if e.action == "archive"]
    assert [e.version for e in entries] == [2, 3, 4]
    assert entries[0].reason.startswith("retention: the newest 1 versions no alias points at stay")


def test_retention_spares_a_version_an_alias_moved_to_meanwhile(world, registry) -> None:
    world.add(3000, start_s=0, rule=1, seed=3, ingested_at=T0 + timedelta(hours=1))
    assert runner(world, registry).run(batch("initial")).promoted
    refusing = runner(world, registry, params=CRIPPLED, gate=GateConfig(metric="auc", margin=0.0))
    refusing.run(batch("r0"))
    refusing.run(batch("r1"))  # v2 and v3: refused, idle

    class Racing(type(registry)):  # type: ignore[misc]
        def archive(self, name, version, reason):
            if version == 2:  # someone points "shadow" at v2 between the listing and the archive
                self.aliases[(name, "shadow")] = 2
            return super().archive(name, version, reason)

    racing = Racing(**{f.name: getattr(registry, f.name) for f in dataclasses.fields(registry)})
    config = dataclasses.replace(refusing.config, keep_idle_versions=0)
    result = RetrainRunner(config, world.builder(horizon_s=1500), racing).run(batch("r2"))

    assert result.archived == [3, 4]
    assert ("fraud", 2) not in racing.archived


def test_retention_that_fails_leaves_the_run_standing(world, registry) -> None:
    world.add(3000, start_s=0, rule=1, seed=3, ingested_at=T0 + timedelta(hours=1))

    class Unlisting(type(registry)):  # type: ignore[misc]
        def list_versions(self, name):
            raise Unavailable("registry restarting")

    unlisting = Unlisting(**{f.name: getattr(registry, f.name) for f in dataclasses.fields(registry)})
    config = dataclasses.replace(runner(world, registry).config, keep_idle_versions=0)
    result = RetrainRunner(config, world.builder(horizon_s=1500), unlisting).run(batch("initial"))

    assert result.promoted
    assert result.archived == []
    assert registry.runs[-1].outcome == registry_pb2.RUN_OUTCOME_PROMOTED


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
    assert not result.deferred
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


def test_a_champion_that_cannot_be_scored_is_not_replaced_and_the_records_say_why(world, registry) -> None:
    drifted_world(world, registry)
    registry.artifacts[("fraud", 1)] = b"not onnx"
    result = runner(world, registry).run(batch("r1"))
    # "Promote only when it wins": without the champion's scores the challenger cannot be shown
    # to win, so it is registered for a person to judge, not promoted.
    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert result.reason.startswith("refused: champion v1 could not be scored on the evaluation set: ")
    assert result.version == 2
    assert registry.champion() == 1
    assert registry.runs[-1].outcome_reason == result.reason
    (registered,) = [a for a in registry.audit if a.action == "register" and a.version == 2]
    assert registered.reason.endswith(result.reason)
    assert [a.version for a in registry.audit if a.action == "set_alias"] == [1]


def test_a_refusal_for_an_unscorable_champion_is_final_even_after_a_degradation(world, registry) -> None:
    drifted_world(world, registry)
    registry.artifacts[("fraud", 1)] = b"not onnx"
    result = runner(world, registry).run(batch("d1", kind=DEGRADATION, may_defer=True))
    # More labels would not make the champion scorable: nothing to wait for.
    assert not result.deferred
    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert "could not be scored on the evaluation set" in result.reason
    assert result.version == 2
    assert registry.champion() == 1


def test_champion_version_is_zero_until_there_is_a_champion(world, registry) -> None:
    world.add(2000, start_s=0, rule=0, seed=1, ingested_at=T0 + timedelta(hours=1))
    retrain = runner(world, registry)
    assert retrain.champion_version() == 0
    assert retrain.run(batch("initial")).promoted
    assert retrain.champion_version() == 1


def test_same_set_and_seed_train_the_same_model(world, registry) -> None:
    world.add(1500, start_s=0, rule=0, seed=1, ingested_at=T0 + timedelta(hours=1))
    first = runner(world, registry).run(batch("a"))
    second = runner(world, registry, gate=GateConfig(margin=0.0)).run(batch("b"))
    assert first.data_hash == second.data_hash
    v1, v2 = registry.get_version("fraud", version=1), registry.get_version("fraud", version=2)
    assert v1.artifact_sha256 == v2.artifact_sha256
    assert second.metrics["holdout_auc"] == pytest.approx(second.metrics["champion_holdout_auc"], abs=0)


def test_challenger_that_ranks_better_but_catches_no_fraud_at_its_threshold_is_rejected(
    world, registry
) -> None:
    # The champion learned that a high f1 means fraud.
    world.add(2000, start_s=0, rule=1, seed=1, ingested_at=T0 + timedelta(hours=1))
    assert runner(world, registry).run(batch("initial")).promoted
    # The challenger trains on "fraud when f0 is high" and cuts where those frauds score. The
    # holdout's frauds have a moderate f0 (below that cut, above every legitimate row), and half
    # of them a high f1: the challenger ranks them better than the champion but flags none.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4000, 4))
    y = (x[:, 0] + 0.3 * rng.normal(size=4000) > 0.8).astype(int)
    holdout = slice(3000, 4000)
    y[holdout] = (rng.random(1000) < 0.1).astype(int)
    frauds = y[holdout] == 1
    x[holdout, 0] = np.where(frauds, rng.uniform(0.1, 0.4, 1000), rng.normal(-1.5, 0.3, 1000))
    x[holdout, 1] = np.where(frauds & (rng.random(1000) < 0.5), rng.uniform(1.5, 2.5, 1000), x[holdout, 1])
    world.add_rows(x, y, start_s=3000, name="challenger", ingested_at=T0 + timedelta(hours=2))

    result = runner(world, registry, horizon_s=3999).run(batch("report-1"))

    assert result.metrics["train_rows"] == 3000
    assert result.metrics["holdout_auc"] >= result.metrics["champion_holdout_auc"] + 0.01
    assert result.metrics["holdout_recall_at_threshold"] == 0.0
    assert result.metrics["champion_holdout_recall_at_threshold"] > 0.3
    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert result.reason.startswith(f"refused: challenger catches none of the {frauds.sum()} frauds")
    assert "champion v1 recall=" in result.reason
    assert "on auc alone it would win" in result.reason
    assert registry.champion() == 1
    run = registry.runs[-1]
    assert run.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert run.outcome_reason == result.reason
    assert run.metrics["holdout_positives"] == frauds.sum()


def test_decision_threshold_comes_from_out_of_fold_training_scores_never_the_holdout(make_world) -> None:
    thresholds = []
    for flip in (False, True):
        world = make_world(f"w{flip}")
        rng = np.random.default_rng(4)
        x = rng.normal(size=(1200, 4))
        y = (x[:, 0] + 0.3 * rng.normal(size=1200) > 0.8).astype(int)
        if flip:  # other holdout labels: the threshold must not move
            y[900:] = 1 - y[900:]
        world.add_rows(x, y, start_s=0, name="rows")
        training_set = world.builder(min_rows=10).build_recent()
        challenger = fit_challenger(
            training_set, FAST, holdout_fraction=0.25, parity_tolerance=1e-5, reference_rows=10
        )
        train_idx, _ = training_set.split(0.25)
        features, labels = training_set.features[train_idx], training_set.labels[train_idx]
        chosen = best_f1_threshold(labels, out_of_fold_scores(features, labels, FAST))
        assert challenger.decision_threshold == served_threshold(chosen)
        assert chosen - 1e-6 < challenger.decision_threshold <= chosen
        thresholds.append(challenger.decision_threshold)
    assert thresholds[0] == thresholds[1]


def rare_fraud(world, *, start_s: float, n: int, positives: int, name: str, ingested_at: datetime) -> None:
    """``n`` rows whose only frauds are ``positives`` rows spread evenly, all with f0 > 1.5."""
    rng = np.random.default_rng(len(name) + n)
    x = rng.normal(size=(n, 4))
    x[:, 0] = np.minimum(x[:, 0], 1.0)
    y = np.zeros(n, dtype=int)
    picked = np.linspace(0, n - 1, positives).astype(int)
    y[picked] = 1
    x[picked, 0] = 1.5 + rng.random(positives)
    world.add_rows(x, y, start_s=start_s, name=name, ingested_at=ingested_at)


def test_too_few_positives_defers_the_run_and_a_later_attempt_with_enough_trains(world, registry) -> None:
    rare_fraud(world, start_s=0, n=1200, positives=24, name="early", ingested_at=T0 + timedelta(hours=1))

    first = runner(world, registry).run(batch("report-1", may_defer=True))

    assert first.deferred
    assert first.outcome_name == "deferred"
    assert first.outcome == registry_pb2.RUN_OUTCOME_DEFERRED
    assert registry.runs[-1].outcome == registry_pb2.RUN_OUTCOME_DEFERRED
    assert first.reason.startswith("deferred: insufficient_data: too few positive labels: 18 among the 900")
    assert first.metrics["train_positives"] == 18
    assert not registry.versions
    assert registry.runs[-1].outcome_reason == first.reason

    # More labels arrive: the window now holds enough frauds in its training rows and holdout.
    rare_fraud(world, start_s=1200, n=1200, positives=120, name="later", ingested_at=T0 + timedelta(hours=2))
    second = runner(world, registry, horizon_s=2399).run(batch("report-1", may_defer=True, attempt=2))

    assert not second.deferred
    assert second.promoted, second.reason
    assert second.params["attempt"] == "2"
    assert registry.champion() == 1
    assert second.metrics["train_positives"] >= 20


def test_too_few_positives_in_the_holdout_defers_the_run(world, registry) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1200, 4))
    y = (x[:, 0] > 1.0).astype(int)
    y[900:] = 0  # no fraud in the holdout: recall there means nothing
    world.add_rows(x, y, start_s=0, name="quiet", ingested_at=T0 + timedelta(hours=1))
    result = runner(world, registry).run(batch("r1", may_defer=True))
    assert result.deferred
    assert result.reason.endswith("too few positive labels: 0 among the 300 holdout rows (need 10)")
    assert not registry.versions


def test_shortage_fails_the_run_when_the_batch_may_not_be_deferred(world, registry) -> None:
    rare_fraud(world, start_s=0, n=1200, positives=24, name="early", ingested_at=T0 + timedelta(hours=1))
    result = runner(world, registry).run(batch("r1"))
    assert not result.deferred
    assert result.outcome_name == "failed"
    assert result.reason.startswith("failed: insufficient_data: too few positive labels")


def test_scheduler_retries_a_deferred_retrain_until_labels_suffice(world, registry, tmp_path) -> None:
    rare_fraud(world, start_s=0, n=1200, positives=24, name="early", ingested_at=T0 + timedelta(hours=1))
    results: list[RunResult] = []
    journaled: list[list[str]] = []
    journal = TriggerJournal(tmp_path / "pending.json")

    def run(b: TriggerBatch) -> RunResult:
        result = runner(world, registry, horizon_s=2399).run(b)
        results.append(result)
        if result.deferred:
            journaled.append([t.trigger_id for t in journal.load()])
            # Labels keep arriving while the trigger waits.
            rare_fraud(
                world, start_s=1200, n=1200, positives=120, name="later", ingested_at=T0 + timedelta(hours=2)
            )
        return result

    scheduler = RetrainScheduler(
        Debouncer(window_s=0.01, retry_s=0.05, max_defer_s=3600), run, journal=journal
    )
    scheduler.start()
    try:
        scheduler.submit(Trigger("drift", "report-9", "fraud", time.time()))
        assert scheduler.wait_idle(60)
    finally:
        scheduler.stop(30)

    assert [r.outcome_name for r in results] == ["deferred", "promoted"]
    assert [r.trigger_id for r in results] == ["report-9", "report-9"]
    assert results[1].params["attempt"] == "2"
    assert journaled == [["report-9"]]  # pending (and journaled) while it waited
    assert journal.load() == []
    assert registry.champion() == 1


def test_an_early_refusal_after_a_change_is_deferred_and_a_later_try_can_still_win(world, registry) -> None:
    # Right after a change the window holds too few labels of it: a refusal then must not be
    # final, or the degraded champion serves until the drift service's cooldowns end.
    world.add(3000, start_s=0, rule=1, seed=3, ingested_at=T0 + timedelta(hours=1))
    assert runner(world, registry).run(batch("initial")).promoted
    weak = runner(world, registry, params=CRIPPLED, gate=GateConfig(metric="auc", margin=0.0))

    first = weak.run(batch("d1", kind=DEGRADATION, may_defer=True))

    assert first.deferred
    assert first.reason.startswith("deferred: refused_for_now: refused: challenger auc=")
    assert first.reason.endswith("trying again with the labels that arrive meanwhile")
    # A degradation batch: the gate asks for a better operating point than the champion's too.
    assert "the champion's live performance degraded and the challenger is no better" in first.reason
    assert first.params["gate_better_f1_when_degraded"] == "True"
    assert first.version == 0  # nothing registered for a refusal that is not final
    assert registry.champion() == 1
    # The retry retrains the champion's own recipe on the same rows: a tie, which only a gate
    # without the degraded-champion rule (tested in test_gate.py) lets through.
    later = runner(
        world, registry, gate=GateConfig(metric="auc", margin=-1.0, better_f1_when_degraded=False)
    ).run(batch("d1", kind=DEGRADATION, may_defer=True, attempt=2))
    assert later.promoted


@pytest.mark.parametrize(
    ("kind", "may_defer", "attempt"),
    [
        ("manual", True, 1),  # a person asked for this one run
        ("drift", True, 1),  # a distribution shift alone may be a false alarm: the champion may be fine
        (DEGRADATION, False, 1),  # the batch's last allowed try
        (DEGRADATION, True, 8),  # past the refused retries (6 by default)
    ],
)
def test_a_refusal_is_final_otherwise(world, registry, kind: str, may_defer: bool, attempt: int) -> None:
    world.add(3000, start_s=0, rule=1, seed=3, ingested_at=T0 + timedelta(hours=1))
    assert runner(world, registry).run(batch("initial")).promoted
    weak = runner(world, registry, params=CRIPPLED, gate=GateConfig(metric="auc", margin=0.0))

    result = weak.run(batch("r1", kind=kind, may_defer=may_defer, attempt=attempt))

    assert not result.deferred
    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert result.version == 2
    assert registry.champion() == 1
