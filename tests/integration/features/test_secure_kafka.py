"""The features service over SCRAM and TLS: faust's consumer (aiokafka) and the kit's producer
(librdkafka) both log in to a broker that refuses anonymous clients, from one set of settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis

from driftline.features.v1 import features_pb2
from driftline.kit.testing import consume, create_test_topics, unique_prefix
from driftline.kit.topics import FEATURE_VECTORS, TRANSACTIONS_CLEAN

from ..brokers import kafka_environment

pytestmark = pytest.mark.integration


def test_the_service_consumes_and_publishes_through_a_scram_listener(
    secure_kafka, harness, redis_settings, tmp_path
):
    settings = secure_kafka.scram
    prefix = unique_prefix()
    ns = SimpleNamespace(  # what harness.start_service reads of a Namespace
        prefix=prefix,
        source=TRANSACTIONS_CLEAN.namespaced(prefix),
        vectors=FEATURE_VECTORS.namespaced(prefix),
        key_prefix=prefix.rstrip("."),
        offline_root=tmp_path / "offline",
        app_id=f"{prefix}features",
        processes=[],
    )
    create_test_topics(settings, [ns.source, ns.vectors])
    client = redis.Redis.from_url(redis_settings.url)
    try:
        messages = harness.transactions(40, cards=4, seed=5)
        harness.produce(settings, ns.source, messages)
        proc = harness.start_service(
            ns,
            tmp_path / "features.log",
            environment={**kafka_environment(settings), "DRIFTLINE_KAFKA_SESSION_TIMEOUT_MS": "6000"},
        )
        published = consume(settings, ns.vectors.name, expected=40, timeout_s=90)
        assert harness.stop(proc) == 0
        vectors = [features_pb2.FeatureVector.FromString(m.value()) for m in published]
        assert sorted(v.event_id for v in vectors) == sorted(m.event_id for m in messages)
        cards = {m.card_id for m in messages}
        stored = {key.decode().rsplit(":", 1)[-1] for key in client.scan_iter(match=f"{ns.key_prefix}:*")}
        assert cards <= stored  # and the online store has every card
    finally:
        harness.clean_up(ns, settings, client)
        client.close()
