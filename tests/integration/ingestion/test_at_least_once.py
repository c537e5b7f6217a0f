"""De-duplication in Redis under at-least-once delivery, on the real broker and Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Message

from driftline.events.v1 import transaction_pb2
from driftline.kit.testing import consume
from driftline.simulator import SimulatorConfig, TransactionSimulator

pytestmark = pytest.mark.integration


def events(n: int, seed: int = 5) -> list[bytes]:
    config = SimulatorConfig(seed=seed, start=datetime.now(UTC) - timedelta(hours=1))
    return [json.dumps(e.event).encode() for e in TransactionSimulator(config).events(n)]


def publish(env: Any, values: list[bytes]) -> list[Message]:
    producer = env.producer()
    futures = [producer.send(env.raw, v, key=json.loads(v)["card_id"]) for v in values]
    producer.flush(30)
    producer.close()
    return [f.result() for f in futures]


class Crash(RuntimeError):
    pass


def test_a_batch_replayed_after_a_crash_before_commit_is_clean_again_not_duplicate(env: Any) -> None:
    values = events(40)
    publish(env, values)
    crashed_batches: list[int] = []

    def crash_once(batch: Sequence[Message]) -> None:
        if not crashed_batches:
            crashed_batches.append(len(batch))
            raise Crash("killed between delivery and commit")

    with env.ingestion(before_commit=crash_once) as first:
        first.thread.join(timeout=60)
        assert [type(e) for e in first.errors] == [Crash]
    crashed = crashed_batches[0]
    assert crashed > 0
    # The crashed batch's event ids are in Redis, yet its offsets were never committed.
    with env.ingestion() as second:
        second.wait_consumed(40)
        assert second.value("driftline_ingestion_duplicates_total") == 0
        assert second.value("driftline_ingestion_clean_total") == 40
    clean = consume(env.kafka, env.clean.name, expected=40 + crashed)
    ids = [transaction_pb2.CleanTransaction.FromString(m.value()).event_id for m in clean]
    assert len(ids) == 40 + crashed  # the crashed batch's outputs, then all 40 again: nothing lost
    assert len(set(ids)) == 40


def test_a_resent_event_is_a_duplicate_within_the_horizon(env: Any) -> None:
    values = events(30, seed=6)
    sent = publish(env, values)
    with env.ingestion() as running:
        running.wait_consumed(30)
        publish(env, values[:10])  # the producer retried: same events, new offsets
        running.wait_consumed(40)
        assert running.value("driftline_ingestion_clean_total") == 30
        assert running.value("driftline_ingestion_duplicates_total") == 10
    # Redis holds each id with the coordinates of its first copy and the configured TTL.
    event_id = json.loads(values[0])["event_id"]
    key = f"{env.settings.dedup_key_prefix}{event_id}"
    assert env.redis.get(key).decode() == f"{env.raw.name}/{sent[0].partition()}/{sent[0].offset()}"
    assert 0 < env.redis.ttl(key) <= env.settings.dedup_ttl_s


def test_an_event_is_accepted_again_after_the_horizon(env: Any) -> None:
    settings = env.settings.copy(update={"dedup_ttl_s": 1})
    values = events(5, seed=8)
    publish(env, values)
    with env.ingestion(settings=settings) as running:
        running.wait_consumed(5)
        keys = [f"{settings.dedup_key_prefix}{json.loads(v)['event_id']}" for v in values]
        assert all(0 < env.redis.pttl(key) <= 1000 for key in keys)
        deadline = time.monotonic() + 5
        while env.redis.exists(*keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert env.redis.exists(*keys) == 0
        publish(env, values)
        running.wait_consumed(10)
        assert running.value("driftline_ingestion_clean_total") == 10
        assert running.value("driftline_ingestion_duplicates_total") == 0
