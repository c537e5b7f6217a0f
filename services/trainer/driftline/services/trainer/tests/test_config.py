from __future__ import annotations

import pytest
from pydantic import ValidationError

from driftline.services.trainer.config import Settings


def test_gate_and_positive_minimums_reach_the_runner() -> None:
    settings = Settings(max_recall_drop=0.2, min_positives=30, min_holdout_positives=12, margin=0.01)
    config = settings.runner_config("rev")
    assert config.gate.max_recall_drop == 0.2
    assert config.gate.margin == 0.01
    assert (config.min_positives, config.min_holdout_positives) == (30, 12)


def test_a_negative_margin_is_refused_at_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # A negative margin would promote a challenger worse than the champion.
    monkeypatch.setenv("DRIFTLINE_TRAINER_MARGIN", "-0.01")
    with pytest.raises(ValidationError, match="margin"):
        Settings()
    monkeypatch.setenv("DRIFTLINE_TRAINER_MARGIN", "0")
    assert Settings().margin == 0.0


def test_retention_is_off_unless_set_and_reaches_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLINE_TRAINER_KEEP_IDLE_VERSIONS", raising=False)
    assert Settings().runner_config("rev").keep_idle_versions is None
    monkeypatch.setenv("DRIFTLINE_TRAINER_KEEP_IDLE_VERSIONS", "3")
    assert Settings().runner_config("rev").keep_idle_versions == 3
    monkeypatch.setenv("DRIFTLINE_TRAINER_KEEP_IDLE_VERSIONS", "-1")
    with pytest.raises(ValidationError, match="keep_idle_versions"):
        Settings()
