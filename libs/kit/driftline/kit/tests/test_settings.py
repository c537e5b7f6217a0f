import pytest
from pydantic import ValidationError

from driftline.kit.settings import GrpcServerSettings, KafkaSettings, LogSettings, RedisSettings


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
