"""The features service end to end on the real broker and Redis: the same events through the
stream (Redis, published vectors, offline store) and through the offline builder agree."""

from __future__ import annotations

import urllib.request

import numpy as np
import pandas as pd
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from driftline.features.v1 import features_pb2
from driftline.featurestore.aggregation import replay
from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.events import transaction_event
from driftline.featurestore.offline import OfflineStore, build_training_set_from_events
from driftline.featurestore.online import OnlineStore
from driftline.featurestore.vectors import FeatureStatus, entity_features_from_proto
from driftline.kit import kafka
from driftline.kit.kafka import KafkaProducer
from driftline.kit.testing import consume

pytestmark = pytest.mark.integration

FS = TRANSACTION_FEATURES


def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_stream_online_and_offline_paths_give_identical_vectors(
    namespace_factory, harness, kafka_settings, redis_settings, tmp_path
):
    ns = namespace_factory()
    messages = harness.transactions(400, cards=8, seed=11)
    events = [transaction_event(m) for m in messages]
    harness.produce(kafka_settings, ns.source, messages)
    poison = KafkaProducer(kafka_settings)
    poison.send(ns.source, b"\x00not a transaction", key=b"card-000")
    poison.close()

    port = harness.free_port()
    proc = harness.start_service(ns, tmp_path / "features.log", metrics_port=port)
    published = consume(kafka_settings, ns.vectors.name, expected=400, timeout_s=90)
    dead = consume(kafka_settings, ns.source.dead_letter_topic().name, expected=1, timeout_s=30)
    offline = OfflineStore(ns.offline_root, FS)
    harness.wait_for(lambda: len(offline.read()) >= 400, 30, "offline rows")
    samples = metric_samples(port)
    assert harness.stop(proc) == 0  # SIGTERM: a clean, graceful stop

    # 1. Every published vector equals the offline replay's vector for that event.
    expected = {e.event_id: c for e, c in replay(FS, events)}
    assert len(published) == 400
    for message in published:
        vector = features_pb2.FeatureVector.FromString(message.value())
        assert message.key().decode() == vector.entity_id
        np.testing.assert_allclose(
            entity_features_from_proto(vector).vector(), expected[vector.event_id].values, rtol=0, atol=1e-9
        )

    # 2. Redis holds each card's newest values: the replay's as of its newest event; all OK.
    store = OnlineStore(redis.Redis.from_url(redis_settings.url), FS, key_prefix=ns.key_prefix)
    newest = {}
    for e, c in replay(FS, events):
        newest[e.entity_id] = c
    cards = sorted(newest)
    read = store.read(cards, now=max(c.event_time for c in newest.values()) + 1)
    for entity in read:
        assert entity.status is FeatureStatus.OK
        np.testing.assert_allclose(entity.vector(), newest[entity.entity_id].values, rtol=0, atol=1e-9)
        assert entity.event_time == newest[entity.entity_id].event_time
    store.close()

    # 3. The offline store's point-in-time training set equals one built from the raw events.
    labels = pd.DataFrame(
        {
            "entity_id": [e.entity_id for e in events],
            "event_time": pd.to_datetime([round(e.event_time * 1e6) for e in events], unit="us", utc=True),
            "label": [i % 2 for i in range(len(events))],
        }
    )
    from_store = offline.build_training_set(labels)
    from_events = build_training_set_from_events(FS, events, labels)
    np.testing.assert_allclose(
        from_store[FS.feature_names].to_numpy(), from_events[FS.feature_names].to_numpy(), rtol=0, atol=1e-9
    )
    assert (from_store["feature_event_id"] == from_events["feature_event_id"]).all()

    # 4. The poison message went to the dead-letter topic with its reason; nothing else did.
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert headers[kafka.DLQ_REASON] == b"decode_error"
    assert dead[0].value() == b"\x00not a transaction"

    # 5. Freshness was measured for every event; every event was counted.
    label = (("feature_set", FS.key),)
    assert samples[("driftline_features_freshness_seconds_count", label)] == 400
    assert samples[("driftline_features_events_total", (*label, ("outcome", "added")))] == 400
