from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import length_delimited, timestamp_fields, to_timestamp, varint


@pytest.mark.parametrize("number", [1, 127, 128, 300, 16_383, 16_384, 2**31 - 1, 2**63 - 1, -1, -(2**63)])
def test_a_varint_has_the_bytes_protobuf_writes(number: int) -> None:
    # Timestamp.seconds is an int64: field 1, varint.
    assert b"\x08" + varint(number) == Timestamp(seconds=number).SerializeToString()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 5_000])
def test_a_length_delimited_field_has_the_bytes_protobuf_writes(size: int) -> None:
    text = "x" * size
    expected = inference_pb2.PredictionLog(prediction_id=text).SerializeToString()
    assert (length_delimited(0x0A, text.encode()) if size else b"") == expected


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 27, 13, 5, 7, 123_456, tzinfo=UTC),
        datetime(2026, 11, 27, 13, 5, 7, tzinfo=UTC),
        datetime(2026, 11, 27, 14, 5, 7, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(1900, 1, 1, tzinfo=UTC),
    ],
)
def test_timestamp_fields_are_those_of_the_timestamp_message(moment: datetime) -> None:
    assert timestamp_fields(moment) == to_timestamp(moment).SerializeToString()


def test_a_naive_time_has_no_timestamp() -> None:
    with pytest.raises(ValueError, match="naive"):
        timestamp_fields(datetime(2026, 1, 1))


def test_a_value_is_read_as_protobuf_or_as_json_by_its_content_type():
    from google.protobuf.timestamp_pb2 import Timestamp

    from driftline.kit.kafka import CONTENT_TYPE, JSON, decode_value
    from driftline.kit.testing import FakeMessage

    stamp = Timestamp(seconds=1_700_000_000, nanos=5)
    assert decode_value(Timestamp, FakeMessage(stamp.SerializeToString())) == stamp
    as_json = FakeMessage(b'"2023-11-14T22:13:20.000000005Z"', _headers=[(CONTENT_TYPE, JSON.encode())])
    assert decode_value(Timestamp, as_json) == stamp
    with pytest.raises(ValueError, match="in JSON"):
        decode_value(Timestamp, FakeMessage(b"{not json", _headers=[(CONTENT_TYPE, JSON.encode())]))
    with pytest.raises(ValueError, match=r"not a valid google\.protobuf\.Timestamp"):
        decode_value(Timestamp, FakeMessage(b"\xff\xff"))
