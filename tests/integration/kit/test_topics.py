"""Topic creation against the real broker: idempotent, and loud about a partition mismatch."""

from __future__ import annotations

import dataclasses

import pytest
from confluent_kafka.admin import AdminClient

from driftline.kit.testing import delete_topics, unique_prefix
from driftline.kit.topics import FEATURE_VECTORS, TopicMismatch, ensure_topics

pytestmark = pytest.mark.integration


def _partitions(bootstrap: str, name: str) -> int:
    return len(
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(name, timeout=15).topics[name].partitions
    )


def test_topics_are_created_once_with_their_declared_partitions(kafka_settings):
    topic = FEATURE_VECTORS.namespaced(unique_prefix())
    bootstrap = kafka_settings.bootstrap_servers
    try:
        assert ensure_topics(kafka_settings, [topic]) == [topic.name]
        assert _partitions(bootstrap, topic.name) == topic.partitions
        assert ensure_topics(kafka_settings, [topic]) == []  # a repeat creates nothing and raises nothing
    finally:
        delete_topics(kafka_settings, [topic])


def test_an_existing_topic_with_other_partitions_is_refused_by_name(kafka_settings):
    declared = FEATURE_VECTORS.namespaced(unique_prefix())
    bootstrap = kafka_settings.bootstrap_servers
    other = dataclasses.replace(declared, partitions=declared.partitions + 1)
    try:
        ensure_topics(kafka_settings, [other])
        with pytest.raises(
            TopicMismatch,
            match=rf"{declared.name} has {other.partitions} partitions, declared {declared.partitions}",
        ):
            ensure_topics(kafka_settings, [declared])
        assert _partitions(bootstrap, declared.name) == other.partitions  # left as it was
    finally:
        delete_topics(kafka_settings, [declared])
