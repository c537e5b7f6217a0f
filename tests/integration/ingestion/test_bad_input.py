"""Each kind of bad input, on the real broker and Redis: it lands on the dead-letter topic with its
reason code, its original bytes and its source coordinates; good input lands on the clean topic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Message

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE, JSON, PROTOBUF
from driftline.kit.testing import consume
from driftline.simulator import rfc3339

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def event(case: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": f"ev-{case}",
        "card_id": f"card-{case}",
        "merchant_id": "m-us-e001",
        "amount": 42.5,
        "currency": "usd",
        "merchant_category": "grocery",
        "country": "us",
        "channel": "pos",
        "event_time": rfc3339(NOW - timedelta(minutes=1)),
        "contract_version": "1",
    }
    base.update(changes)
    return base


def as_json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def without(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != name}


JSON_HEADER = [(CONTENT_TYPE, JSON.encode())]
PROTOBUF_HEADER = [(CONTENT_TYPE, PROTOBUF.encode())]

#: case -> (value, headers, expected dead-letter reason or None for clean)
CASES: dict[str, tuple[bytes, list[tuple[str, bytes]], str | None]] = {
    "malformed_json": (b'{"event_id": "ev-x", "amount": }', JSON_HEADER, "malformed_json"),
    "truncated": (as_json(event("truncated"))[:57], JSON_HEADER, "malformed_json"),
    "invalid_utf8": (as_json(event("invalid_utf8")).replace(b"m-us-e001", b"m-\xff\xfe"), [], "invalid_utf8"),
    "missing_field": (as_json(without(event("missing_field"), "amount")), JSON_HEADER, "missing_field"),
    "extra_field": (as_json(event("extra_field", cvv="123")), JSON_HEADER, "unknown_field"),
    "nan": (as_json(event("nan", amount=float("nan"))), JSON_HEADER, "not_finite"),
    "infinity": (as_json(event("infinity", amount=float("-inf"))), JSON_HEADER, "not_finite"),
    "out_of_range": (as_json(event("out_of_range", amount=-3)), JSON_HEADER, "out_of_range"),
    "far_future": (
        as_json(event("far_future", event_time=rfc3339(NOW + timedelta(days=1)))),
        JSON_HEADER,
        "event_time_in_future",
    ),
    "far_past": (
        as_json(event("far_past", event_time=rfc3339(NOW - timedelta(days=400)))),
        JSON_HEADER,
        "event_time_too_old",
    ),
    "oversized": (as_json(event("oversized", merchant_id="m" * 100_000)), JSON_HEADER, "payload_too_large"),
    "protobuf": (
        transaction_pb2.RawTransaction(**event("protobuf", amount=9.99)).SerializeToString(),
        PROTOBUF_HEADER,
        None,
    ),
    "corrupt_protobuf": (b"\x0a\xff\x01", PROTOBUF_HEADER, "undecodable_protobuf"),
    "plain_json_without_header": (as_json(event("plain_json_without_header")), [], None),
    "duplicate_first": (as_json(event("duplicate")), JSON_HEADER, None),
    "duplicate_second": (as_json(event("duplicate", amount=1.0)), JSON_HEADER, "duplicate"),
}


@dataclass
class Outcome:
    sent: dict[str, Message]
    dead: dict[str, Message]
    clean: dict[str, transaction_pb2.CleanTransaction]
    clean_messages: list[Message]
    consumed: int
    clean_count: int
    duplicates: int
    dead_by_reason: dict[str, int]
    raw_topic: str


@pytest.fixture(scope="module")
def outcome(make_env: Any) -> Iterator[Outcome]:
    with make_env() as env:
        producer = env.producer()
        sent: dict[str, Message] = {}
        for case, (value, headers, _) in CASES.items():
            # Send one at a time so that the duplicate's original is always read first.
            sent[case] = producer.send(env.raw, value, key=case, headers=headers).result(timeout=30)
        producer.close()
        with env.ingestion() as running:
            running.wait_consumed(len(CASES))
            result = Outcome(
                sent=sent,
                dead={},
                clean={},
                clean_messages=[],
                consumed=running.consumed,
                clean_count=int(running.value("driftline_ingestion_clean_total")),
                duplicates=int(running.value("driftline_ingestion_duplicates_total")),
                dead_by_reason=running.dead_lettered(),
                raw_topic=env.raw.name,
            )
        expected_dead = sum(1 for _, _, r in CASES.values() if r not in (None, "duplicate"))
        expected_clean = sum(1 for _, _, r in CASES.values() if r is None)
        for message in consume(env.kafka, env.raw.dead_letter_topic().name, expected=expected_dead):
            result.dead[message.key().decode()] = message
        result.clean_messages = consume(env.kafka, env.clean.name, expected=expected_clean)
        for message in result.clean_messages:
            clean = transaction_pb2.CleanTransaction.FromString(message.value())
            result.clean[clean.event_id] = clean
        yield result


DEAD_CASES = [case for case, (_, _, reason) in CASES.items() if reason not in (None, "duplicate")]


@pytest.mark.parametrize("case", DEAD_CASES)
def test_bad_input_is_dead_lettered_with_reason_bytes_and_coordinates(outcome: Outcome, case: str) -> None:
    value, _, reason = CASES[case]
    assert case in outcome.dead, f"{case} never reached the dead-letter topic"
    record = outcome.dead[case]
    headers = dict(record.headers() or [])
    assert headers["dlq.reason"].decode() == reason
    assert headers["dlq.detail"]
    assert record.value() == value
    source = outcome.sent[case]
    assert headers["dlq.source.topic"].decode() == outcome.raw_topic
    assert int(headers["dlq.source.partition"]) == source.partition()
    assert int(headers["dlq.source.offset"]) == source.offset()
    assert headers["dlq.service"] == b"ingestion"
    assert f"ev-{case}" not in outcome.clean


def test_a_protobuf_event_is_ingested_like_json(outcome: Outcome) -> None:
    clean = outcome.clean["ev-protobuf"]
    assert (clean.card_id, clean.amount, clean.currency, clean.country) == (
        "card-protobuf",
        9.99,
        "USD",
        "US",
    )
    source = outcome.sent["protobuf"]
    assert (clean.source_partition, clean.source_offset) == (source.partition(), source.offset())
    assert "ev-plain_json_without_header" in outcome.clean


def test_clean_events_are_keyed_by_card(outcome: Outcome) -> None:
    for message in outcome.clean_messages:
        clean = transaction_pb2.CleanTransaction.FromString(message.value())
        assert message.key() == clean.card_id.encode()


def test_a_duplicate_is_counted_and_only_its_first_copy_is_clean(outcome: Outcome) -> None:
    assert outcome.clean["ev-duplicate"].amount == 42.5
    assert sum(1 for e in outcome.clean.values() if e.event_id == "ev-duplicate") == 1
    assert len(outcome.clean_messages) == len(outcome.clean)
    assert outcome.duplicates == 1
    assert "duplicate_second" not in outcome.dead


def test_every_message_is_accounted_for(outcome: Outcome) -> None:
    assert outcome.consumed == len(CASES)
    assert outcome.clean_count == len(outcome.clean_messages) == 3
    assert sum(outcome.dead_by_reason.values()) == len(outcome.dead) == len(DEAD_CASES)
    assert outcome.consumed == outcome.clean_count + sum(outcome.dead_by_reason.values()) + outcome.duplicates
    expected_reasons: dict[str, int] = {}
    for case in DEAD_CASES:
        reason = CASES[case][2]
        assert reason is not None
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert outcome.dead_by_reason == expected_reasons
