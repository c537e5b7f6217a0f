"""The platform's Kafka clients over TLS and SASL, against a real broker that demands them.

One private broker (``secure_kafka``) listens with mutual TLS on one port and SCRAM-SHA-512 over
TLS on another, started by the stack's own script. Every client the kit builds (admin, producer,
consumer loop, the lag reader) takes its connection from ``KafkaSettings.connection``: here they
create a topic, produce, consume, commit and read the group's lag through each listener, and a
client that brings the wrong credentials is refused with the broker's reason in its log.
"""

from __future__ import annotations

import logging
import threading

import pytest
from confluent_kafka import KafkaException
from pydantic import SecretStr

from driftline.kit import kafka
from driftline.kit.lag import GroupLag
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import (
    Authority,
    consume,
    create_test_topics,
    delete_topics,
    unique_prefix,
    wait_for,
)
from driftline.kit.topics import Topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("listener", ["mutual_tls", "scram"])
def test_topics_producers_consumer_loops_and_lag_work_through_a_secured_listener(secure_kafka, listener):
    settings: KafkaSettings = getattr(secure_kafka, listener)
    prefix = unique_prefix()
    source = Topic(name=f"{prefix}secure.source.v1", key="k", message=None, partitions=2)
    sink = Topic(name=f"{prefix}secure.sink.v1", key="k", message=None, partitions=2)
    create_test_topics(settings, [source, sink])
    producer = kafka.KafkaProducer(settings)
    loop = kafka.ConsumerLoop(
        settings,
        group_id=f"{prefix}g",
        topics=[source],
        handler=kafka.per_message(lambda m: [kafka.Output(sink.name, m.value().upper(), m.key())]),
        producer=producer,
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    try:
        values = [f"m{i}".encode() for i in range(20)]
        kafka.wait_all([producer.send(source.name, v, key=v) for v in values], 30)
        thread.start()
        out = consume(settings, sink.name, expected=20, timeout_s=60)
        assert sorted(m.value() for m in out) == sorted(v.upper() for v in values)
        lag = GroupLag(settings, f"{prefix}g", [source.name])
        wait_for(lambda: sum(lag.read().values()) == 0, 30, "the loop's commits")
        assert sum(lag.read().values()) == 0  # all 20 committed, read through the same listener
    finally:
        loop.stop()
        thread.join(15)
        producer.close()
        delete_topics(settings, [source, sink])


def _refusal(settings: KafkaSettings, caplog: pytest.LogCaptureFixture) -> str:
    """The broker's refusal of ``settings``: the admin call fails, and librdkafka's log says why."""
    admin = kafka.admin_client(settings)
    with caplog.at_level(logging.WARNING, logger="librdkafka"):
        with pytest.raises(KafkaException, match="Failed to get metadata"):
            admin.list_topics(timeout=3)
        admin.poll(0)  # hand the log lines over
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "librdkafka")


def test_a_wrong_scram_password_is_refused_with_the_reason(secure_kafka, caplog):
    wrong = secure_kafka.scram.copy(update={"sasl_password": SecretStr("not-the-password")})
    assert "Authentication failed" in _refusal(wrong, caplog)


def test_a_client_without_a_certificate_is_refused_by_the_mutual_tls_listener(secure_kafka, caplog):
    anonymous = secure_kafka.mutual_tls.copy(update={"ssl_cert_file": None, "ssl_key_file": None})
    assert "bad certificate" in _refusal(anonymous, caplog)


def test_a_broker_whose_certificate_the_client_does_not_trust_is_refused(secure_kafka, caplog, tmp_path):
    stranger = Authority(tmp_path, "stranger")
    trusting_another = secure_kafka.scram.copy(update={"ssl_ca_file": stranger.ca_file})
    assert "certificate verify failed" in _refusal(trusting_another, caplog)


def test_plaintext_to_a_tls_listener_gets_nothing(secure_kafka, caplog):
    plain = KafkaSettings(bootstrap_servers=secure_kafka.scram.bootstrap_servers)
    _refusal(plain, caplog)  # no metadata: the listener speaks TLS only
