from __future__ import annotations

import numpy as np
import pytest

from driftline.kit.errors import InvalidArgument
from driftline.services.trainer.gate import Decision, GateConfig, decide, evaluate


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
