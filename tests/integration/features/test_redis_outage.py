"""Redis down under the features service: the stream waits for it, un-acked, instead of
dead-lettering good transactions, and catches up when Redis is back. The service runs as a real
process; a redis-server of the test's own, on a port of its own, plays the outage."""

from __future__ import annotations

import pytest

from driftline.features.v1 import features_pb2
from driftline.featurestore import TRANSACTION_FEATURES
from driftline.featurestore.online import OnlineStore
from driftline.kit.testing import consume, free_port, redis_server

pytestmark = pytest.mark.integration

COUNT = 60


def test_a_redis_outage_is_waited_out_and_no_transaction_is_dead_lettered(
    namespace_factory, harness, kafka_settings, tmp_path
):
    ns = namespace_factory()
    messages = harness.transactions(COUNT, cards=12, seed=11)
    harness.produce(kafka_settings, ns.source, messages)
    port = free_port()
    log_path = tmp_path / "features.log"
    proc = harness.start_service(
        ns,
        log_path,
        environment={"DRIFTLINE_REDIS_URL": f"redis://127.0.0.1:{port}/0", "DRIFTLINE_REDIS_RETRIES": "1"},
        batch_max="20",
        offline_enabled="false",
    )

    def waits() -> int:
        return log_path.read_text(errors="replace").count('"dependency_unavailable"')

    # Nothing listens on the port yet: the agent's first batch waits, attempt after attempt.
    harness.wait_for(lambda: waits() >= 2, 120, "the agent to wait for Redis twice")
    assert proc.poll() is None
    with redis_server(port, tmp_path) as client:
        vectors = consume(kafka_settings, ns.vectors.name, expected=COUNT, timeout_s=120)
        assert sorted(features_pb2.FeatureVector.FromString(v.value()).event_id for v in vectors) == sorted(
            m.event_id for m in messages
        )
        # Every card's features reached the online store once Redis was back.
        store = OnlineStore(client, TRANSACTION_FEATURES, key_prefix=ns.key_prefix)
        for card in {m.card_id for m in messages}:
            assert client.exists(store.key(card))
        assert harness.stop(proc) == 0
    assert consume(kafka_settings, ns.source.dead_letter_topic().name, expected=1, timeout_s=3) == []
