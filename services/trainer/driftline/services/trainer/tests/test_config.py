from __future__ import annotations

from driftline.services.trainer.config import Settings


def test_gate_and_positive_minimums_reach_the_runner() -> None:
    settings = Settings(max_recall_drop=0.2, min_positives=30, min_holdout_positives=12, margin=0.01)
    config = settings.runner_config("rev")
    assert config.gate.max_recall_drop == 0.2
    assert config.gate.margin == 0.01
    assert (config.min_positives, config.min_holdout_positives) == (30, 12)
