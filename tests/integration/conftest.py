"""Fixtures of the integration tests that need more than the shared stack."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import Authority, free_port

from .brokers import private_broker, run_stack

#: ``stack(*args, env=None, timeout_s=180)``: see the ``stack`` fixture.
Stack = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def stack() -> Stack:
    """Runs the local stack's own script: ``brokers.run_stack``."""
    return run_stack


SCRAM_USER = "driftline-test"
SCRAM_PASSWORD = "scram-secret-4c1d"


@dataclass(frozen=True)
class SecureKafka:
    """A private broker that serves TLS and SASL beside plaintext, and settings to reach it."""

    authority: Authority
    plaintext: KafkaSettings
    #: SSL with a client certificate the broker's CA signed (the listener demands one).
    mutual_tls: KafkaSettings
    #: SASL_SSL, logged in with SCRAM-SHA-512.
    scram: KafkaSettings


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """One private broker for the session, started by the stack's script with its TLS and SASL
    listeners (``KAFKA_SSL_PORT``, ``KAFKA_SASL_SSL_PORT``): the real handshakes and logins."""
    folder: Path = tmp_path_factory.mktemp("secure-kafka")
    authority = Authority(folder, "kafka")
    broker, client = authority.issue("broker"), authority.issue("client")
    ssl_port, sasl_port = free_port(), free_port()
    env = {
        "KAFKA_SSL_PORT": str(ssl_port),
        "KAFKA_SASL_SSL_PORT": str(sasl_port),
        "KAFKA_TLS_CERT_FILE": str(broker.cert),
        "KAFKA_TLS_KEY_FILE": str(broker.key),
        "KAFKA_TLS_CA_FILE": str(authority.ca_file),
        "KAFKA_SCRAM_USER": SCRAM_USER,
        "KAFKA_SCRAM_PASSWORD": SCRAM_PASSWORD,
    }
    with private_broker(folder, env) as plaintext:
        yield SecureKafka(
            authority=authority,
            plaintext=KafkaSettings(bootstrap_servers=plaintext),
            mutual_tls=KafkaSettings(
                bootstrap_servers=f"127.0.0.1:{ssl_port}",
                security_protocol="SSL",
                ssl_ca_file=authority.ca_file,
                ssl_cert_file=client.cert,
                ssl_key_file=client.key,
            ),
            scram=KafkaSettings(
                bootstrap_servers=f"127.0.0.1:{sasl_port}",
                security_protocol="SASL_SSL",
                ssl_ca_file=authority.ca_file,
                sasl_mechanism="SCRAM-SHA-512",
                sasl_username=SCRAM_USER,
                sasl_password=SCRAM_PASSWORD,
            ),
        )
