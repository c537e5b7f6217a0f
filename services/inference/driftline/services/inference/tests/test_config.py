"""Settings the inference service refuses to start with."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from driftline.services.inference.config import Settings


def test_tls_is_served_by_the_python_server_not_the_data_plane(tmp_path, monkeypatch):
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("PEM")
    monkeypatch.setenv("DRIFTLINE_INFERENCE_TLS_CERT_FILE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("DRIFTLINE_INFERENCE_TLS_KEY_FILE", str(tmp_path / "key.pem"))
    with pytest.raises(ValidationError, match="the compiled data plane serves plaintext only"):
        Settings()
    monkeypatch.setenv("DRIFTLINE_INFERENCE_DATA_PLANE", "false")
    assert Settings().grpc.tls


def test_shadow_and_canary_are_exclusive(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_INFERENCE_SHADOW", "true")
    monkeypatch.setenv("DRIFTLINE_INFERENCE_CANARY_SHARE", "0.2")
    with pytest.raises(ValidationError, match="shadow and canary_share > 0 are exclusive"):
        Settings()
