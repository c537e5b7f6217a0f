from __future__ import annotations

import numpy as np
import pytest

from driftline.kit.errors import InvalidArgument
from driftline.services.trainer.gate import (
    Decision,
    GateConfig,
    OperatingPoint,
    decide,
    evaluate,
    operating_point,
)


def metrics(auc: float, f1: float = 0.5) -> dict[str, float]:
    return {"auc": auc, "f1": f1, "average_precision": 0.5, "accuracy": 0.9, "neg_log_loss": -0.2}


def test_challenger_that_beats_the_champion_by_the_margin_is_promoted() -> None:
    verdict = decide(GateConfig(metric="auc", margin=0.01), metrics(0.90), metrics(0.85), champion_version=3)
    assert verdict.decision is Decision.PROMOTE
    assert "v3" in verdict.reason
    assert "0.9000" in verdict.reason


def test_challenger_worse_than_the_champion_is_refused_with_the_numbers() -> None:
    verdict = decide(GateConfig(metric="auc", margin=0.01), metrics(0.80), metrics(0.85), champion_version=3)
    assert verdict.decision is Decision.REJECT
    assert verdict.reason.startswith("refused")
    assert "challenger auc=0.8000" in verdict.reason
    assert "champion v3 auc=0.8500" in verdict.reason


def test_challenger_better_but_within_the_margin_is_refused() -> None:
    verdict = decide(GateConfig(metric="auc", margin=0.05), metrics(0.88), metrics(0.85), champion_version=1)
    assert verdict.decision is Decision.REJECT
    assert "needs >= 0.9000" in verdict.reason


def test_gate_uses_the_configured_metric() -> None:
    config = GateConfig(metric="f1", margin=0.0)
    verdict = decide(config, metrics(0.70, f1=0.8), metrics(0.95, f1=0.6), champion_version=1)
    assert verdict.decision is Decision.PROMOTE
    assert "f1" in verdict.reason


def test_winner_waits_for_approval_when_manual_approval_is_configured() -> None:
    verdict = decide(GateConfig(manual_approval=True), metrics(0.99), metrics(0.5), champion_version=1)
    assert verdict.decision is Decision.PENDING_APPROVAL
    assert "manual approval" in verdict.reason


def test_first_model_is_promoted_when_there_is_no_champion() -> None:
    verdict = decide(GateConfig(), metrics(0.7), None)
    assert verdict.decision is Decision.PROMOTE
    assert "no champion" in verdict.reason


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown gate metric"):
        GateConfig(metric="vibes")


def test_evaluate_needs_both_classes() -> None:
    with pytest.raises(InvalidArgument):
        evaluate(np.zeros(10, dtype=int), np.linspace(0, 1, 10))


def test_evaluate_scores_a_perfect_ranking_as_auc_one() -> None:
    y = np.array([0, 0, 1, 1])
    result = evaluate(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert result["auc"] == 1.0
    assert result["f1"] == 1.0
    assert result["accuracy"] == 1.0


def point(
    recall: float, *, threshold: float = 0.3, positives: int = 40, precision: float = 0.5
) -> OperatingPoint:
    return OperatingPoint(
        threshold=threshold, recall=recall, precision=precision, positives=positives, flagged=positives
    )


def test_challenger_with_better_auc_but_no_recall_at_its_threshold_is_refused() -> None:
    verdict = decide(
        GateConfig(metric="auc", margin=0.005),
        metrics(0.93),
        metrics(0.88),
        champion_version=3,
        challenger_point=point(0.0, threshold=0.01, positives=23, precision=0.0),
        champion_point=point(0.7, threshold=0.41, positives=23),
    )
    assert verdict.decision is Decision.REJECT
    assert verdict.reason.startswith("refused: challenger catches none of the 23 frauds")
    assert "at its decision threshold 0.0100" in verdict.reason
    assert "champion v3 recall=0.70" in verdict.reason
    # The ranking comparison it would have won on is kept in the reason.
    assert "on auc alone it would win: challenger auc=0.9300 vs champion v3 auc=0.8800" in verdict.reason


def test_zero_recall_is_refused_even_without_a_champion() -> None:
    verdict = decide(GateConfig(), metrics(0.9), None, challenger_point=point(0.0, positives=12))
    assert verdict.decision is Decision.REJECT
    assert "catches none of the 12 frauds" in verdict.reason


def test_recall_below_the_champions_by_more_than_the_tolerance_is_refused() -> None:
    verdict = decide(
        GateConfig(max_recall_drop=0.10),
        metrics(0.95),
        metrics(0.90),
        champion_version=2,
        challenger_point=point(0.55),
        champion_point=point(0.70, threshold=0.45),
    )
    assert verdict.decision is Decision.REJECT
    assert "challenger recall=0.55" in verdict.reason
    assert "champion v2 recall=0.70" in verdict.reason
    assert "max recall drop 0.1, needs >= 0.60" in verdict.reason


def test_recall_drop_within_the_tolerance_is_promoted_and_the_reason_gives_both_recalls() -> None:
    verdict = decide(
        GateConfig(max_recall_drop=0.10),
        metrics(0.95),
        metrics(0.90),
        champion_version=2,
        challenger_point=point(0.62),
        champion_point=point(0.70, threshold=0.45),
    )
    assert verdict.decision is Decision.PROMOTE
    assert verdict.reason.startswith("wins: challenger auc=0.9500")
    assert "challenger recall=0.62" in verdict.reason
    assert "champion v2 recall=0.70" in verdict.reason


def test_recall_drop_of_exactly_the_tolerance_is_allowed() -> None:
    # 0.8 - 0.1 is 0.7000000000000001 in floating point; 28/40 recall must still pass.
    verdict = decide(
        GateConfig(max_recall_drop=0.1),
        metrics(0.95),
        metrics(0.90),
        challenger_point=point(28 / 40),
        champion_point=point(32 / 40),
    )
    assert verdict.decision is Decision.PROMOTE


def test_refusal_on_the_metric_still_starts_with_the_metric_comparison() -> None:
    verdict = decide(
        GateConfig(margin=0.01),
        metrics(0.80),
        metrics(0.85),
        champion_version=1,
        challenger_point=point(0.0),
        champion_point=point(0.5),
    )
    assert verdict.decision is Decision.REJECT
    assert verdict.reason.startswith("refused: challenger auc=0.8000 vs champion v1 auc=0.8500")
    assert "catches none of the 40 frauds" in verdict.reason


def test_operating_point_flags_scores_at_or_above_the_threshold() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.5, 0.2, 0.5, 0.1, 0.0, 0.6])
    op = operating_point(labels, scores, 0.5)
    assert (op.positives, op.flagged) == (3, 4)
    assert op.recall == pytest.approx(2 / 3)
    assert op.precision == pytest.approx(2 / 4)


def test_max_recall_drop_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="max_recall_drop"):
        GateConfig(max_recall_drop=1.5)


def test_against_a_degraded_champion_a_tie_at_the_threshold_is_refused() -> None:
    # Session 3's demo: trained on pre-change rows, the challenger beat the degraded champion's AUC
    # by the margin and caught exactly the frauds it caught, at a slightly worse precision.
    args = (GateConfig(), metrics(0.7634), metrics(0.7579))
    points = {
        "champion_version": 1,
        "challenger_point": point(0.42, precision=0.11),
        "champion_point": point(0.42, precision=0.12),
    }
    assert decide(*args, **points).decision is Decision.PROMOTE  # a drift report alone: as before
    verdict = decide(*args, **points, champion_degraded=True)
    assert verdict.decision is Decision.REJECT
    assert "the champion's live performance degraded" in verdict.reason
    assert "(F1 0.17 vs 0.19)" in verdict.reason
    assert verdict.reason.startswith("refused: challenger recall=0.42")


def test_against_a_degraded_champion_a_better_operating_point_wins() -> None:
    verdict = decide(
        GateConfig(),
        metrics(0.93),
        metrics(0.63),
        champion_version=1,
        challenger_point=point(0.61, precision=0.36),
        champion_point=point(0.0, precision=0.0),
        champion_degraded=True,
    )
    assert verdict.decision is Decision.PROMOTE
    assert "recall drop allowed" not in verdict.reason  # it gave up no recall
    assert "no worse" not in verdict.reason  # and beat the margin


def test_the_degraded_champion_rule_can_be_turned_off() -> None:
    verdict = decide(
        GateConfig(better_f1_when_degraded=False),
        metrics(0.95),
        metrics(0.90),
        challenger_point=point(0.5),
        champion_point=point(0.5),
        champion_degraded=True,
    )
    assert verdict.decision is Decision.PROMOTE
    assert point(0.5, precision=0.5).f1 == 0.5
    assert point(0.0, precision=0.0).f1 == 0.0


def test_a_champion_that_cannot_be_scored_is_not_beaten() -> None:
    verdict = decide(
        GateConfig(),
        metrics(0.99),
        None,
        champion_version=3,
        champion_problem="data_loss: the artifact is not a model",
        challenger_point=point(0.9),
    )
    assert verdict.decision is Decision.REJECT
    assert verdict.reason.startswith(
        "refused: champion v3 could not be scored on the evaluation set: "
        "data_loss: the artifact is not a model; challenger auc=0.9900"
    )
    assert verdict.champion is None


def test_against_a_champion_degraded_on_precision_a_better_f1_may_give_up_some_recall() -> None:
    # This session's second demo run: v4 caught the new frauds by flagging many legitimate
    # transactions (live precision 0.29); the retrain its degradation asked for was refused on
    # recall alone (0.80 against 0.92, floor 0.82) although its F1 was far better.
    args = (GateConfig(), metrics(0.9980), metrics(0.9910))
    points = {
        "champion_version": 4,
        "challenger_point": point(0.80, precision=0.74),
        "champion_point": point(0.92, precision=0.38),
    }
    refused = decide(*args, **points)  # a drift report: the champion's operating point holds
    assert refused.decision is Decision.REJECT
    assert "(max recall drop 0.1, needs >= 0.82)" in refused.reason
    verdict = decide(*args, **points, champion_degraded=True)
    assert verdict.decision is Decision.PROMOTE
    assert (
        "recall drop allowed 0.25, against a degraded champion with a better F1 (0.77 vs 0.54)"
        in verdict.reason
    )


def test_against_a_degraded_champion_the_wider_recall_drop_still_has_a_floor() -> None:
    verdict = decide(
        GateConfig(),
        metrics(0.99),
        metrics(0.98),
        champion_version=4,
        challenger_point=point(0.60, precision=1.0),  # F1 0.75 beats 0.54, recall 0.32 below
        champion_point=point(0.92, precision=0.38),
        champion_degraded=True,
    )
    assert verdict.decision is Decision.REJECT
    assert "max recall drop 0.25, against a degraded champion with a better F1" in verdict.reason
    assert "needs >= 0.67" in verdict.reason


def test_max_recall_drop_when_degraded_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="max_recall_drop_when_degraded"):
        GateConfig(max_recall_drop_when_degraded=-0.1)


def test_against_a_degraded_champion_a_better_f1_need_only_rank_no_worse() -> None:
    # This session's fourth demo run: v5 was degraded on precision; the retrain ranked a little
    # better (0.9973 against 0.9931) but not by the margin, at a far better operating point.
    args = (GateConfig(), metrics(0.9973), metrics(0.9931))
    points = {
        "champion_version": 5,
        "challenger_point": point(0.81, precision=0.75),
        "champion_point": point(0.88, precision=0.45),
    }
    assert decide(*args, **points).decision is Decision.REJECT  # a drift report: the margin holds
    verdict = decide(*args, **points, champion_degraded=True)
    assert verdict.decision is Decision.PROMOTE
    assert "needs >= 0.9881: no worse, against a degraded champion with a better F1" in verdict.reason


def test_against_a_degraded_champion_ranking_worse_than_the_margin_still_loses() -> None:
    verdict = decide(
        GateConfig(),
        metrics(0.90),
        metrics(0.95),
        champion_version=5,
        challenger_point=point(0.81, precision=0.75),
        champion_point=point(0.88, precision=0.45),
        champion_degraded=True,
    )
    assert verdict.decision is Decision.REJECT
    assert "needs >= 0.9450: no worse" in verdict.reason
