"""Any Kafka client can publish raw events: here aiokafka, a client written in pure Python that
shares no code with librdkafka (the client under kcat and confluent-kafka), publishing gzip
batches. Ingestion must read what it wrote as it reads its own producers' messages."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF
from driftline.kit.testing import consume
from driftline.services.ingestion.testing import valid_event
from driftline.simulator import rfc3339

pytestmark = pytest.mark.integration


def event(case: str, **changes: Any) -> dict[str, Any]:
    recent = rfc3339(datetime.now(UTC) - timedelta(minutes=1))
    return valid_event(event_id=f"ev-{case}", card_id=f"card-{case}", event_time=recent, **changes)


#: case -> (key, value, headers); the key names the case on the dead-letter topic.
SENT: dict[str, tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = {
    # What `kcat -P -t <topic>` sends for a line of JSON: no key, no header.
    "bare_line": (None, json.dumps(event("bare_line")).encode(), []),
    # A header spelled as a browser would, with a parameter: still JSON.
    "json_with_charset": (
        b"json_with_charset",
        json.dumps(event("json_with_charset")).encode(),
        [(CONTENT_TYPE, b"Application/JSON; charset=utf-8")],
    ),
    "protobuf": (
        b"protobuf",
        transaction_pb2.RawTransaction(**event("protobuf", amount=12.5)).SerializeToString(),
        [(CONTENT_TYPE, PROTOBUF.encode())],
    ),
    "garbage": (b"garbage", b"amount=12,currency=EUR", []),
}


async def publish(bootstrap: str, topic: str) -> dict[str, RecordMetadata]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", acks="all")
    await producer.start()
    try:
        return {
            case: await producer.send_and_wait(topic, value, key=key, headers=headers)
            for case, (key, value, headers) in SENT.items()
        }
    finally:
        await producer.stop()


def test_events_from_a_client_that_is_not_librdkafka_are_ingested(env: Any) -> None:
    sent = asyncio.run(publish(env.kafka.bootstrap_servers, env.raw.name))
    with env.ingestion() as running:
        running.wait_consumed(len(SENT))
        assert running.value("driftline_ingestion_clean_total") == 3
        assert running.dead_lettered() == {"malformed_json": 1}

    clean = {
        e.event_id: e
        for e in (
            transaction_pb2.CleanTransaction.FromString(m.value())
            for m in consume(env.kafka, env.clean.name, expected=3)
        )
    }
    assert set(clean) == {"ev-bare_line", "ev-json_with_charset", "ev-protobuf"}
    for case in ("bare_line", "json_with_charset", "protobuf"):
        record = clean[f"ev-{case}"]
        assert record.card_id == f"card-{case}"
        # The lineage points at the very record aiokafka wrote.
        assert (record.source_partition, record.source_offset) == (sent[case].partition, sent[case].offset)
    assert clean["ev-protobuf"].amount == 12.5

    (dead,) = consume(env.kafka, env.raw.dead_letter_topic().name, expected=1)
    headers = dict(dead.headers() or [])
    assert dead.value() == SENT["garbage"][1]
    assert headers["dlq.reason"] == b"malformed_json"
    assert int(headers["dlq.source.offset"]) == sent["garbage"].offset
