"""Settings: the DRIFTLINE_REGISTRY_ prefix, laptop defaults, and where data lives."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from driftline.services.registry.config import Settings


def test_defaults_bind_loopback_on_the_registry_ports(monkeypatch):
    for name in ("DRIFTLINE_REGISTRY_TOKEN", "DRIFTLINE_REGISTRY_PORT", "DRIFTLINE_REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.host, settings.port, settings.metrics_port) == ("127.0.0.1", 15051, 9103)
    assert settings.token is None
    assert settings.write_tokens() == {}
    assert settings.max_artifact_bytes < settings.max_message_bytes


def test_sqlite_and_artifacts_default_to_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path.resolve() / 'registry.db'}"
    assert settings.resolved_artifact_dir() == tmp_path / "artifacts"


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("DRIFTLINE_REGISTRY_TOKEN", "t1")
    monkeypatch.setenv("DRIFTLINE_REGISTRY_TOKENS", '{"trainer": "t2"}')
    monkeypatch.setenv("DRIFTLINE_REGISTRY_DATABASE_URL", "postgresql+psycopg://u:p@h:5432/d")
    monkeypatch.setenv("DRIFTLINE_REGISTRY_ARTIFACT_DIR", str(tmp_path))
    monkeypatch.setenv("DRIFTLINE_REGISTRY_MAX_ARTIFACT_BYTES", "1000")
    monkeypatch.setenv("DRIFTLINE_REGISTRY_OUTBOX_POLL_INTERVAL_S", "0.25")
    settings = Settings()
    assert settings.write_tokens() == {"default": "t1", "trainer": "t2"}
    assert settings.resolved_database_url() == "postgresql+psycopg://u:p@h:5432/d"
    assert settings.resolved_artifact_dir() == Path(tmp_path)
    assert settings.max_artifact_bytes == 1000
    assert settings.outbox_poll_interval_s == 0.25
    assert "t1" not in repr(settings)


def test_lock_breakers_must_be_configured_tokens(monkeypatch):
    monkeypatch.delenv("DRIFTLINE_REGISTRY_TOKEN", raising=False)
    monkeypatch.setenv("DRIFTLINE_REGISTRY_TOKENS", '{"ops": "t1", "admin": "t2"}')
    monkeypatch.setenv("DRIFTLINE_REGISTRY_LOCK_BREAKERS", '["admin"]')
    assert Settings().lock_breakers == ["admin"]
    with pytest.raises(ValidationError, match=r"configured tokens.*\['admn'\]"):
        Settings(lock_breakers=["admin", "admn"])
    assert Settings(token=SecretStr("t3"), lock_breakers=["default"]).lock_breakers == ["default"]
    with pytest.raises(ValidationError, match="default"):
        Settings(tokens={}, lock_breakers=["default"])


def test_every_setting_is_documented():
    for name, field in Settings.__fields__.items():
        assert field.field_info.description, name
