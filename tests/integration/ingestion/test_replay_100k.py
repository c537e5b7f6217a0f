"""Done when: 100k generated events with 5% garbage and 2% duplicates come out as exactly the
expected numbers of clean, dead-lettered and duplicate events, with nothing unaccounted."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import DLQ_REASON
from driftline.kit.testing import consume, written
from driftline.services.ingestion.produce import Publisher, live_traffic
from driftline.services.ingestion.traffic import Kind, simulated

pytestmark = pytest.mark.integration

COUNT = 100_000


def test_100k_events_with_garbage_and_duplicates_are_all_accounted_for(make_env: Any) -> None:
    now = datetime.now(UTC)
    config = live_traffic(seed=42, count=COUNT, rate=None, garbage_rate=0.05, duplicate_rate=0.02, now=now)
    messages = list(simulated(config, now=now))
    kinds = Counter(m.kind for m in messages)
    expected_reasons = Counter(str(m.expected_reason) for m in messages if m.kind is Kind.GARBAGE)
    valid_ids = {m.event.event_id for m in messages if m.event is not None}
    assert kinds[Kind.VALID] == len(valid_ids)
    assert kinds[Kind.GARBAGE] == pytest.approx(0.05 * COUNT, rel=0.05)
    assert kinds[Kind.DUPLICATE] == pytest.approx(0.02 * COUNT, rel=0.1)

    with make_env(batch_size=5000) as env, env.ingestion() as running:
        # Ingestion consumes while the replay is being published, as it would in production.
        producer = env.producer()
        stats = Publisher(producer, raw_topic=env.raw, feedback_topic=env.feedback).run(
            messages, feedback=False
        )
        producer.close()
        assert (stats.sent, stats.failed) == (COUNT, 0)
        running.wait_consumed(COUNT, timeout_s=120)
        clean = int(running.value("driftline_ingestion_clean_total"))
        duplicates = int(running.value("driftline_ingestion_duplicates_total"))
        dead_by_reason = running.dead_lettered()
        dead = sum(dead_by_reason.values())

        # The service's own accounting: exact, and it adds up.
        assert clean == kinds[Kind.VALID]
        assert duplicates == kinds[Kind.DUPLICATE]
        assert dead_by_reason == dict(expected_reasons)
        assert COUNT - clean - dead - duplicates == 0

        # What actually reached the topics agrees with it: no more than that was written (a
        # reader that stops at the expected count would not see surplus copies), and these.
        assert written(env.kafka, env.clean) == clean
        assert written(env.kafka, env.raw.dead_letter_topic()) == dead
        clean_messages = consume(env.kafka, env.clean.name, expected=clean, timeout_s=60)
        clean_ids = [transaction_pb2.CleanTransaction.FromString(m.value()).event_id for m in clean_messages]
        assert len(clean_ids) == clean
        assert set(clean_ids) == valid_ids
        dead_messages = consume(env.kafka, env.raw.dead_letter_topic().name, expected=dead, timeout_s=60)
        assert len(dead_messages) == dead
        topic_reasons = Counter(dict(m.headers() or [])[DLQ_REASON].decode() for m in dead_messages)
        assert topic_reasons == expected_reasons
