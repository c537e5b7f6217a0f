"""Settings the inference service refuses to start with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from driftline.services.inference.config import Settings


def test_shadow_and_canary_are_exclusive(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_INFERENCE_SHADOW", "true")
    monkeypatch.setenv("DRIFTLINE_INFERENCE_CANARY_SHARE", "0.2")
    with pytest.raises(ValidationError, match="shadow and canary_share > 0 are exclusive"):
        Settings()
