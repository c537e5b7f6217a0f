"""Protobuf <-> Kafka value helpers and time conversions used across services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)


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
