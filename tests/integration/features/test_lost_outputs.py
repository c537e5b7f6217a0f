"""Outputs the broker never acknowledges stop the real worker, exit code 1, with nothing committed
past the batch: a restart replays it (faust alone would restart the agent and read on past it,
and a graceful stop would wait for ever for the batch's events to be acked)."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition

from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import delete_topics

pytestmark = pytest.mark.integration


def _committed(settings: KafkaSettings, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in offsets]
    finally:
        consumer.close()


def test_a_batch_whose_vectors_are_never_acknowledged_stops_the_worker_uncommitted(
    namespace_factory, harness, kafka_settings, tmp_path
):
    ns = namespace_factory()
    delete_topics(kafka_settings, [ns.vectors])  # the broker creates no topic: no vector is ever acknowledged
    messages = harness.transactions(5, cards=1, seed=3)
    harness.produce(kafka_settings, ns.source, messages)
    log = tmp_path / "features.log"
    proc = harness.start_service(
        ns, log, offline_enabled="false", environment={"DRIFTLINE_KAFKA_DELIVERY_TIMEOUT_MS": "3000"}
    )
    try:
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "features_batch_failed" in text
    assert "features_stopped_after_failure" in text
    # No offset of the source was committed past anything: the restart reads the batch again.
    assert all(
        offset < 1 for offset in _committed(kafka_settings, ns.app_id, ns.source.name, ns.source.partitions)
    )
