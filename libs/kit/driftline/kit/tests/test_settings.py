import pytest
from pydantic import ValidationError

from driftline.kit.settings import (
    GrpcServerSettings,
    KafkaSettings,
    LogSettings,
    RedisSettings,
    RegistryTlsSettings,
)


def test_settings_read_their_own_env_prefix(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    monkeypatch.setenv("DRIFTLINE_REDIS_URL", "redis://x@h:1/0")
    assert KafkaSettings().bootstrap_servers == "10.0.0.1:9092"
    assert RedisSettings().url == "redis://x@h:1/0"


def test_servers_bind_loopback_by_default():
    assert GrpcServerSettings().host == "127.0.0.1"


def test_every_setting_is_documented():
    for cls in (KafkaSettings, RedisSettings, GrpcServerSettings, LogSettings):
        for name, field in cls.__fields__.items():
            assert field.field_info.description, f"{cls.__name__}.{name} has no description"


def test_a_log_level_is_one_python_knows_and_a_format_one_there_is(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_LOG_LEVEL", "debug")
    assert LogSettings().level == "DEBUG"
    monkeypatch.setenv("DRIFTLINE_LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError, match="unknown level 'LOUD'"):
        LogSettings()
    monkeypatch.delenv("DRIFTLINE_LOG_LEVEL")
    monkeypatch.setenv("DRIFTLINE_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="unexpected value; permitted: 'json', 'console'"):
        LogSettings()


class _Server(GrpcServerSettings):
    class Config:
        env_prefix = "T_SERVER_"


def test_a_server_s_tls_needs_its_certificate_and_key_together(tmp_path):
    cert, key, ca = (tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("PEM")
    assert not _Server().tls
    assert _Server(tls_cert_file=cert, tls_key_file=key).tls
    with pytest.raises(ValidationError, match="T_SERVER_TLS_CERT_FILE and T_SERVER_TLS_KEY_FILE go together"):
        _Server(tls_cert_file=cert)
    with pytest.raises(ValidationError, match="T_SERVER_TLS_CLIENT_CA_FILE needs T_SERVER_TLS_CERT_FILE"):
        _Server(tls_client_ca_file=ca)
    with pytest.raises(ValidationError, match="does not exist"):
        _Server(tls_cert_file=tmp_path / "missing.pem", tls_key_file=key)


def test_a_registry_client_uses_tls_when_told_or_given_a_ca(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    assert not RegistryTlsSettings().uses_tls
    monkeypatch.setenv("DRIFTLINE_REGISTRY_TLS", "true")
    assert RegistryTlsSettings().uses_tls
    monkeypatch.delenv("DRIFTLINE_REGISTRY_TLS")
    monkeypatch.setenv("DRIFTLINE_REGISTRY_CA_FILE", str(ca))
    assert RegistryTlsSettings().uses_tls
    monkeypatch.setenv("DRIFTLINE_REGISTRY_CLIENT_CERT_FILE", str(ca))
    with pytest.raises(
        ValidationError, match="CLIENT_CERT_FILE and DRIFTLINE_REGISTRY_CLIENT_KEY_FILE go together"
    ):
        RegistryTlsSettings()
