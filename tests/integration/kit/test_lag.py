"""A group's lag read from the broker (what faust's consumer does not report), on the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from driftline.kit.lag import GroupLag
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import FEATURE_VECTORS

pytestmark = pytest.mark.integration


def test_lag_counts_from_the_committed_offset_or_from_the_start_where_nothing_was_committed(kafka_settings):
    topic = FEATURE_VECTORS.namespaced(unique_prefix())  # 3 partitions
    group = f"{topic.name}-group"
    create_test_topics(kafka_settings, [topic])
    try:
        producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
        for partition, count in ((0, 10), (1, 3)):
            for i in range(count):
                producer.produce(topic.name, f"m{i}".encode(), partition=partition)
        assert producer.flush(30) == 0
        lag = GroupLag(kafka_settings, group, [topic.name])
        assert lag.read() == {(topic.name, 0): 10, (topic.name, 1): 3, (topic.name, 2): 0}

        committer = Consumer({"bootstrap.servers": kafka_settings.bootstrap_servers, "group.id": group})
        try:
            committer.commit(offsets=[TopicPartition(topic.name, 0, 4)], asynchronous=False)
        finally:
            committer.close()
        assert lag.report() == {(topic.name, 0): 6, (topic.name, 1): 3, (topic.name, 2): 0}
        labels = {"group": group, "topic": topic.name, "partition": "0"}
        assert REGISTRY.get_sample_value("driftline_kafka_consumer_lag", labels) == 6
    finally:
        delete_topics(kafka_settings, [topic])


def test_a_topic_that_does_not_exist_has_no_lag(kafka_settings):
    assert GroupLag(kafka_settings, "nobody", [f"{unique_prefix()}absent"]).read() == {}
