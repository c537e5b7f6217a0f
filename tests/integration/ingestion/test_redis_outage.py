"""Redis down: ingestion holds its batch back, uncommitted, instead of dead-lettering valid
events, and carries on where it was once Redis is back: every event clean exactly once, nothing
dead-lettered but the garbage. A redis-server of the test's own, on a port of its own, plays the
outage (the shared one serves the other tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE, JSON
from driftline.kit.outages import OUTAGE_WAITS
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import consume, free_port, redis_server, wait_for
from driftline.services.ingestion.testing import valid_event
from driftline.simulator import rfc3339

pytestmark = pytest.mark.integration

VALID = 40


def test_a_redis_outage_holds_ingestion_back_and_loses_nothing(env: Any, tmp_path: Path) -> None:
    recent = rfc3339(datetime.now(UTC) - timedelta(minutes=1))
    events = [
        valid_event(event_id=f"ev-{i}", card_id=f"card-{i % 7}", event_time=recent) for i in range(VALID)
    ]
    producer = env.producer()
    header = [(CONTENT_TYPE, JSON.encode())]
    for event in events:
        producer.send(env.raw, json.dumps(event).encode(), key=event["card_id"], headers=header)
    producer.send(env.raw, json.dumps(events[3]).encode(), key=events[3]["card_id"], headers=header)
    producer.send(env.raw, b'{"event_id": "ev-x", "amount": ', key="garbage", headers=header)
    producer.close()
    total = VALID + 2

    port = free_port()
    settings = env.settings.copy(
        update={"redis": RedisSettings(url=f"redis://127.0.0.1:{port}/0", retries=1)}
    )
    waits = OUTAGE_WAITS.labels(settings.group_id)
    before = waits._value.get()
    with env.ingestion(settings=settings) as running:
        # Nothing listens on the port: every attempt meets the outage and the batch waits.
        wait_for(lambda: waits._value.get() >= before + 2, 30, "two waits for Redis", interval_s=0.05)
        assert running.consumed == 0
        assert running.dead_lettered() == {}
        assert running.thread.is_alive()
        assert not running.errors
        with redis_server(port, tmp_path):
            running.wait_consumed(total)
            assert running.value("driftline_ingestion_clean_total") == VALID
            assert running.value("driftline_ingestion_duplicates_total") == 1
            assert running.dead_lettered() == {"malformed_json": 1}

    clean = [
        transaction_pb2.CleanTransaction.FromString(m.value())
        for m in consume(env.kafka, env.clean.name, expected=VALID)
    ]
    assert sorted(c.event_id for c in clean) == sorted(e["event_id"] for e in events)
    (dead,) = consume(env.kafka, env.raw.dead_letter_topic().name, expected=1)
    assert dict(dead.headers() or [])["dlq.reason"] == b"malformed_json"
