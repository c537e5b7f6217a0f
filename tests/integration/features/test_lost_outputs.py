"""Outputs the broker never acknowledges stop the real worker, exit code 1, with nothing committed
past the batch: a restart replays it (faust alone would restart the agent and read on past it,
and a graceful stop would wait for ever for the batch's events to be acked)."""

from __future__ import annotations

import subprocess

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.kit.kafka import committed_offsets, offsets_reader
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import delete_topics

pytestmark = pytest.mark.integration


def _committed(settings: KafkaSettings, group: str, topic: str, partitions: int) -> list[int]:
    reader = offsets_reader(settings, group)
    try:
        asked = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in committed_offsets(reader, asked, timeout_s=10)]
    finally:
        reader.close()


def test_a_batch_whose_vectors_are_never_acknowledged_stops_the_worker_uncommitted(
    namespace_factory, harness, kafka_settings, tmp_path
):
    ns = namespace_factory()
    # The broker creates no topic on first use (auto.create.topics.enable=false, as in
    # docker-compose.yml): without its vectors topic, no vector is ever acknowledged.
    delete_topics(kafka_settings, [ns.vectors])
    admin = AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers})
    assert ns.vectors.name not in admin.list_topics(timeout=10).topics
    messages = harness.transactions(5, cards=1, seed=3)
    harness.produce(kafka_settings, ns.source, messages)
    log = tmp_path / "features.log"
    proc = harness.start_service(
        ns, log, offline_enabled="false", environment={"DRIFTLINE_KAFKA_DELIVERY_TIMEOUT_MS": "3000"}
    )
    try:
        code = proc.wait(120)  # start-up and the group join, then a 3 s delivery timeout
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the worker did not exit after its outputs were lost:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "features_batch_failed" in text
    assert "features_stopped_after_failure" in text
    # No offset of the source was committed past anything: the restart reads the batch again.
    committed = _committed(kafka_settings, ns.app_id, ns.source.name, ns.source.partitions)
    assert all(offset < 1 for offset in committed), committed
