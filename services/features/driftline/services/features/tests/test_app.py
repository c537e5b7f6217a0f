"""The faust app reaches the brokers with the same TLS and SASL settings as the librdkafka clients."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust.auth
from faust.types.auth import AuthProtocol, SASLMechanism

from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import Authority
from driftline.services.features.app import broker_credentials


def test_plaintext_needs_no_credentials():
    assert broker_credentials(KafkaSettings()) is None


def test_a_scram_login_over_tls_verifies_the_brokers(tmp_path: Path):
    ca = Authority(tmp_path, "test").ca_file
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        ssl_ca_file=ca,
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="features",
        sasl_password="pw-31cc",
    )
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.auth.SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert credentials.mechanism is SASLMechanism.SCRAM_SHA_256
    assert (credentials.username, credentials.password) == ("features", "pw-31cc")
    context = credentials.ssl_context
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert len(context.get_ca_certs()) == 1  # the CA file's, not the system's


def test_a_scram_login_without_tls_stays_plaintext():
    settings = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.auth.SASLCredentials)
    assert (credentials.protocol, credentials.ssl_context) == (AuthProtocol.SASL_PLAINTEXT, None)


def test_tls_alone_is_ssl_credentials():
    credentials = broker_credentials(KafkaSettings(security_protocol="SSL"))
    assert isinstance(credentials, faust.auth.SSLCredentials)
    assert credentials.protocol is AuthProtocol.SSL
