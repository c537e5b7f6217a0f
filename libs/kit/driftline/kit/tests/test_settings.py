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


def test_kafka_connection_is_plaintext_by_default_and_names_only_the_brokers():
    settings = KafkaSettings(bootstrap_servers="a:1,b:2")
    assert settings.connection() == {"bootstrap.servers": "a:1,b:2", "security.protocol": "PLAINTEXT"}
    assert (settings.uses_ssl, settings.uses_sasl) == (False, False)


def test_kafka_connection_carries_tls_files_and_the_sasl_login(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("pem")
    mutual = KafkaSettings(security_protocol="SSL", ssl_ca_file=ca, ssl_cert_file=cert, ssl_key_file=key)
    assert mutual.connection() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }
    login = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="pw-9f3e",
    )
    assert login.connection() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-256",
        "sasl.username": "u",
        "sasl.password": "pw-9f3e",
    }
    assert (login.uses_ssl, login.uses_sasl) == (True, True)
    assert "pw-9f3e" not in repr(login)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"security_protocol": "SSL", "ssl_cert_file": "CERT"},
            "SSL_CERT_FILE and DRIFTLINE_KAFKA_SSL_KEY_FILE go",
        ),
        (
            {"ssl_ca_file": "CA"},
            "DRIFTLINE_KAFKA_SSL_CA_FILE needs DRIFTLINE_KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "ssl_cert_file": "CERT", "ssl_key_file": "CERT"},
            "DRIFTLINE_KAFKA_SSL_CERT_FILE needs",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "u"},
            "SASL_SSL needs DRIFTLINE_KAFKA_SASL_USERNAME",
        ),
        (
            {"security_protocol": "SSL", "sasl_password": "p"},
            "SASL_PASSWORD need DRIFTLINE_KAFKA_SECURITY_PROTOCOL",
        ),
        ({"security_protocol": "TLS"}, "unexpected value; permitted: 'PLAINTEXT', 'SSL'"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_username": "u",
                "sasl_password": "p",
                "sasl_mechanism": "GSSAPI",
            },
            "permitted: 'SCRAM-SHA-512', 'SCRAM-SHA-256', 'PLAIN'",
        ),
    ],
)
def test_kafka_security_settings_that_do_not_fit_together_are_refused_by_name(tmp_path, values, message):
    (tmp_path / "pem").write_text("pem")
    files = {"CA": tmp_path / "pem", "CERT": tmp_path / "pem"}
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**{name: files.get(value, value) for name, value in values.items()})


def test_redis_tls_files_reach_redis_py_for_a_rediss_url(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("pem")
    assert RedisSettings().tls_options() == {}
    assert not RedisSettings().uses_tls
    settings = RedisSettings(url="rediss://h:1/0", tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key)
    assert settings.uses_tls
    assert settings.tls_options() == {
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"url": "rediss://h:1/0", "tls_cert_file": "PEM"},
            "TLS_CERT_FILE and DRIFTLINE_REDIS_TLS_KEY_FILE go together",
        ),
        ({"tls_ca_file": "PEM"}, "DRIFTLINE_REDIS_TLS_CA_FILE needs a rediss:// DRIFTLINE_REDIS_URL"),
    ],
)
def test_redis_tls_settings_that_do_not_fit_together_are_refused_by_name(tmp_path, values, message):
    (tmp_path / "pem").write_text("pem")
    with pytest.raises(ValidationError, match=message):
        RedisSettings(
            **{name: tmp_path / "pem" if value == "PEM" else value for name, value in values.items()}
        )
