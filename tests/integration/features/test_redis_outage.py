"""Redis down under the features service: the stream waits for it, un-acked, instead of
dead-lettering good transactions, and catches up when Redis is back, also after an outage
longer than the consumer's max.poll.interval. The service runs as a real
process; a redis-server of the test's own, on a port of its own, plays the outage."""

from __future__ import annotations

import time

import pytest

from driftline.features.v1 import features_pb2
from driftline.featurestore import TRANSACTION_FEATURES
from driftline.featurestore.online import OnlineStore
from driftline.kit.testing import consume, free_port, redis_server

pytestmark = pytest.mark.integration

COUNT = 60


#: The long case: the outage lasts four times faust's max.poll.interval, so a consumer that
#: stopped polling while its stream waits would be dropped from the group and its batch handed on.
LONG_POLL_INTERVAL_S, LONG_OUTAGE_S = 5.0, 20.0


@pytest.mark.parametrize("outage", ["short", "longer than max.poll.interval"])
def test_a_redis_outage_is_waited_out_and_no_transaction_is_dead_lettered(
    namespace_factory, harness, kafka_settings, tmp_path, outage
):
    long = outage != "short"
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
        **({"max_poll_interval_s": str(LONG_POLL_INTERVAL_S)} if long else {}),
    )

    def waits() -> int:
        return log_path.read_text(errors="replace").count('"dependency_unavailable"')

    # Nothing listens on the port yet: the agent's first batch waits, attempt after attempt.
    harness.wait_for(lambda: waits() >= 2, 120, "the agent to wait for Redis twice")
    if long:
        time.sleep(LONG_OUTAGE_S)
        assert waits() >= 4
        # The consumer kept polling while its stream waited: the group never rebalanced.
        assert log_path.read_text(errors="replace").count("Setting newly assigned partitions") == 1
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
