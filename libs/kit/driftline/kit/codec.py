"""Protobuf <-> Kafka value helpers, time conversions and protobuf wire pieces used across services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def decode(message_type: type[M], payload: bytes) -> M:
    """Parse a protobuf payload; raise ValueError with the reason when it is not one."""
    message = message_type()
    try:
        message.ParseFromString(payload)
    except DecodeError as err:
        raise ValueError(f"not a valid {message_type.DESCRIPTOR.full_name}: {err}") from err
    return message


def to_timestamp(moment: datetime) -> Timestamp:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Driftline times are always timezone-aware UTC")
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def varint(number: int) -> bytes:
    """A protobuf varint (a negative number as int64 does: two's complement, ten bytes)."""
    if number < 0:
        number += 1 << 64
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def timestamp_parts(seconds: int, nanos: int) -> bytes:
    """A ``Timestamp``'s serialized fields: ``seconds`` (field 1) and ``nanos`` (field 2, 0 to
    999,999,999), each left out when 0, as protobuf writes them."""
    return (b"\x08" + varint(seconds) if seconds else b"") + (b"\x10" + varint(nanos) if nanos else b"")


def timestamp_fields(moment: datetime) -> bytes:
    """The serialized fields of the ``Timestamp`` that :func:`to_timestamp` makes of ``moment``,
    computed exactly in integers, in a tenth of the time."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Driftline times are always timezone-aware UTC")
    delta = moment - _EPOCH
    return timestamp_parts(delta.days * 86_400 + delta.seconds, delta.microseconds * 1000)


def length_delimited(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string, message, packed repeated) with its one-byte tag
    (``field_number << 3 | 2``, fields 1 to 15)."""
    return bytes((tag,)) + varint(len(payload)) + payload
