"""Decoding and the bytes -> verdict core, JSON and protobuf."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.events.v1 import transaction_pb2
from driftline.services.ingestion.contract import Contract, Reason
from driftline.services.ingestion.gate import Accepted, Gate, Rejected, media_type, timestamp, to_clean
from driftline.services.ingestion.quality import QualityWindow

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EVENT: dict[str, Any] = {
    "event_id": "ev-1",
    "card_id": "card-000001",
    "merchant_id": "m-us-e001",
    "amount": 42.5,
    "currency": "usd",
    "merchant_category": "grocery",
    "country": "us",
    "channel": "pos",
    "event_time": "2025-06-01T13:59:00+02:00",
    "contract_version": "1",
}


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate(Contract.load())


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def verdict_reason(gate: Gate, payload: bytes | None, content_type: str | None = None) -> Reason | None:
    verdict = gate.examine(payload, content_type, NOW)
    return verdict.reason if isinstance(verdict, Rejected) else None


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_is_the_default_and_parameters_are_ignored(gate: Gate, content_type: str | None) -> None:
    verdict = gate.examine(_json(EVENT), content_type, NOW)
    assert isinstance(verdict, Accepted)
    assert verdict.values["currency"] == "USD"
    assert verdict.event_id == "ev-1"


def test_media_type_reads_bytes_headers() -> None:
    assert media_type(b"application/x-protobuf") == "application/x-protobuf"
    assert media_type(None) == "application/json"


@pytest.mark.parametrize("payload", [None, b""])
def test_an_empty_message_is_empty_payload(gate: Gate, payload: bytes | None) -> None:
    assert verdict_reason(gate, payload) is Reason.EMPTY_PAYLOAD


def test_a_payload_over_the_size_limit_is_rejected_before_decoding(gate: Gate) -> None:
    assert verdict_reason(gate, b"{" + b" " * 20_000) is Reason.PAYLOAD_TOO_LARGE
    assert verdict_reason(gate, _json({**EVENT, "pad": "x" * 20_000})) is Reason.PAYLOAD_TOO_LARGE
    assert verdict_reason(gate, b"\xff" * 16_385, "text/plain") is Reason.PAYLOAD_TOO_LARGE


def test_the_size_limit_is_inclusive() -> None:
    contract = Contract.from_mapping(
        {"contract": "t", "version": "1", "max_payload_bytes": 10, "fields": {"a": {"type": "string"}}}
    )
    small = Gate(contract)
    assert isinstance(small.examine(b'{"a":"xx"}', None, NOW), Accepted)
    assert verdict_reason(small, b'{"a":"xxx"}') is Reason.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize("content_type", ["text/csv", "application/avro", "text/plain; charset=utf-8"])
def test_other_content_types_are_unsupported(gate: Gate, content_type: str) -> None:
    assert verdict_reason(gate, _json(EVENT), content_type) is Reason.UNSUPPORTED_CONTENT_TYPE


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe{}", _json(EVENT).replace(b"m-us-e001", b"m-\xc3(-e001"), _json(EVENT)[:-1] + b"\xe2\x82"],
)
def test_bytes_that_are_not_utf8_are_invalid_utf8(gate: Gate, payload: bytes) -> None:
    assert verdict_reason(gate, payload) is Reason.INVALID_UTF8


@pytest.mark.parametrize(
    "payload",
    [
        b"hello",
        b"{'a': 1}",
        b'{"event_id": "ev-1",}',
        b"{,}",
        b"[" * 8000 + b"]" * 8000,
        b'{"amount": 1' + b"0" * 5000 + b"}",
    ],
)
def test_text_that_is_not_json_is_malformed_json(gate: Gate, payload: bytes) -> None:
    assert verdict_reason(gate, payload) is Reason.MALFORMED_JSON


def test_every_truncation_of_an_event_is_malformed_json(gate: Gate) -> None:
    data = _json(EVENT)
    assert {verdict_reason(gate, data[:n]) for n in range(1, len(data))} == {Reason.MALFORMED_JSON}


@pytest.mark.parametrize("doc", [[EVENT], 1, "event", None, True])
def test_json_that_is_not_an_object_is_not_an_object(gate: Gate, doc: Any) -> None:
    assert verdict_reason(gate, _json(doc)) is Reason.NOT_AN_OBJECT


def test_a_repeated_key_is_duplicate_key(gate: Gate) -> None:
    payload = b'{"amount": 1, ' + _json(EVENT)[1:]
    verdict = gate.examine(payload, None, NOW)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is Reason.DUPLICATE_KEY
    assert "amount" in verdict.detail


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_json_nan_and_infinity_are_not_finite(gate: Gate, literal: bytes) -> None:
    payload = _json(EVENT).replace(b"42.5", literal)
    assert verdict_reason(gate, payload) is Reason.NOT_FINITE


def test_the_rejection_detail_lists_every_violation(gate: Gate) -> None:
    verdict = gate.examine(_json({**EVENT, "amount": -1, "channel": "x"}), None, NOW)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is Reason.OUT_OF_RANGE
    assert "amount" in verdict.detail
    assert "channel" in verdict.detail


def _proto(**changes: Any) -> bytes:
    return transaction_pb2.RawTransaction(**{**EVENT, **changes}).SerializeToString()


def test_a_protobuf_event_is_accepted_like_its_json_twin(gate: Gate) -> None:
    from_proto = gate.examine(_proto(), "application/x-protobuf", NOW)
    from_json = gate.examine(_json(EVENT), None, NOW)
    assert isinstance(from_proto, Accepted)
    assert from_proto == from_json


def test_a_protobuf_event_with_an_empty_string_has_a_missing_field(gate: Gate) -> None:
    assert verdict_reason(gate, _proto(card_id=""), "application/x-protobuf") is Reason.MISSING_FIELD


def test_a_protobuf_event_without_amount_is_out_of_range(gate: Gate) -> None:
    assert verdict_reason(gate, _proto(amount=0.0), "application/x-protobuf") is Reason.OUT_OF_RANGE


def test_a_protobuf_event_with_unknown_fields_is_unknown_field(gate: Gate) -> None:
    payload = _proto() + b"\xa0\x06\x01"  # field 100, varint 1
    verdict = gate.examine(payload, "application/x-protobuf", NOW)
    assert isinstance(verdict, Rejected)
    assert verdict.reason is Reason.UNKNOWN_FIELD
    assert "#100" in verdict.detail


@pytest.mark.parametrize("payload", [b"\x0a\xff", b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe", _proto()[:-1]])
def test_bytes_that_are_not_a_raw_transaction_are_undecodable_protobuf(gate: Gate, payload: bytes) -> None:
    assert verdict_reason(gate, payload, "application/x-protobuf") is Reason.UNDECODABLE_PROTOBUF


def test_a_protobuf_nan_amount_is_not_finite(gate: Gate) -> None:
    assert verdict_reason(gate, _proto(amount=float("nan")), "application/x-protobuf") is Reason.NOT_FINITE


def test_to_clean_carries_normalised_values_and_lineage(gate: Gate) -> None:
    verdict = gate.examine(_json({**EVENT, "card_id": " card-000001 "}), None, NOW)
    assert isinstance(verdict, Accepted)
    clean = to_clean(
        verdict.values, ingested_at=timestamp(NOW), source_topic="raw", source_partition=2, source_offset=99
    )
    assert clean.card_id == "card-000001"
    assert (clean.currency, clean.country, clean.amount) == ("USD", "US", 42.5)
    assert clean.event_time.ToDatetime(tzinfo=UTC) == datetime(2025, 6, 1, 11, 59, tzinfo=UTC)
    assert clean.ingested_at.ToDatetime(tzinfo=UTC) == NOW
    assert (clean.source_topic, clean.source_partition, clean.source_offset) == ("raw", 2, 99)
    assert clean.contract_version == "1"


def test_the_gate_feeds_the_quality_window() -> None:
    contract = Contract.load()
    quality = QualityWindow(contract.field_names, window=100)
    gate = Gate(contract, quality)
    gate.examine(_json({**EVENT, "amount": None}), None, NOW)
    gate.examine(_json({**EVENT, "amount": -1}), None, NOW)
    gate.examine(_json(EVENT), None, NOW)
    gate.examine(b"not json", None, NOW)  # never decoded: not part of the field statistics
    snapshot = quality.snapshot()
    assert quality.events == 3
    assert snapshot["amount"].null_rate == pytest.approx(1 / 3)
    assert snapshot["amount"].out_of_range_rate == pytest.approx(1 / 3)
    assert snapshot["card_id"].null_rate == 0


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2025, 6, 1, 11, 59, 0, 123456, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_timestamp_matches_protobufs_own_conversion(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment)
    assert timestamp(moment) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {},  # canonical: the fast paths would take it
        {"currency": "usd", "card_id": " card-000001 "},  # valid, normalised by the engine
        {"amount": -1},  # invalid
        {"event_time": "2025-06-02T13:59:00+02:00"},  # invalid: in the future
    ],
)
def test_skipping_the_fast_paths_after_the_native_gate_declined_changes_no_verdict(
    gate: Gate, changes: dict[str, Any]
) -> None:
    payload = _json({**EVENT, "currency": "USD", "country": "US", **changes})
    assert gate.examine(payload, None, NOW, canonical_json_declined=True) == gate.examine(payload, None, NOW)
