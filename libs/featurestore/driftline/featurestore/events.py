"""The engine's input type, and the one way every time representation becomes epoch seconds.

Both the streaming path (protobuf ``CleanTransaction``) and the offline path (data frames, dicts)
convert through :func:`epoch_seconds`, which goes via integer microseconds, so the same instant
always becomes the same float in both paths (no training/serving skew from rounding).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp

from driftline.events.v1 import transaction_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Event:
    """One source event of one entity. ``event_time`` is epoch seconds (UTC)."""

    event_id: str
    entity_id: str
    event_time: float
    fields: Mapping[str, Any]

    @property
    def key(self) -> tuple[float, str]:
        """Total order of an entity's events: event time, then event id."""
        return (self.event_time, self.event_id)


def _micros(moment: Any) -> int:
    if isinstance(moment, Timestamp):
        return moment.seconds * 1_000_000 + moment.nanos // 1000
    if isinstance(moment, pd.Timestamp):
        if moment.tzinfo is None:
            raise ValueError("naive timestamp: Driftline times are timezone-aware UTC")
        return int(moment.value) // 1000
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("naive datetime: Driftline times are timezone-aware UTC")
        return (moment - _EPOCH) // _MICROSECOND
    if isinstance(moment, int | float):
        return round(float(moment) * 1_000_000)
    raise TypeError(f"not a time: {type(moment).__name__}")


def epoch_seconds(moment: Any) -> float:
    """Epoch seconds of a datetime, pandas Timestamp, protobuf Timestamp or number, to the microsecond."""
    return _micros(moment) / 1_000_000


def to_datetime(seconds: float) -> datetime:
    """Timezone-aware UTC datetime of epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def to_timestamp(seconds: float) -> Timestamp:
    micros = round(seconds * 1_000_000)
    ts = Timestamp()
    ts.seconds, rest = divmod(micros, 1_000_000)
    ts.nanos = rest * 1000
    return ts


# --- card transactions ------------------------------------------------------------------------

TRANSACTION_FIELDS = ("amount", "merchant_id", "merchant_category", "country", "channel")


def _transaction_fields(
    amount: float, merchant_id: str, merchant_category: str, country: str, channel: str
) -> dict[str, Any]:
    return {
        "amount": float(amount),
        "merchant_id": str(merchant_id),
        "merchant_category": str(merchant_category).lower(),
        "country": str(country).upper(),
        "channel": str(channel).lower(),
    }


def transaction_event(tx: transaction_pb2.CleanTransaction) -> Event:
    """The engine event of a clean transaction (entity: card_id)."""
    return Event(
        event_id=tx.event_id,
        entity_id=tx.card_id,
        event_time=epoch_seconds(tx.event_time),
        fields=_transaction_fields(tx.amount, tx.merchant_id, tx.merchant_category, tx.country, tx.channel),
    )


def transaction_event_from_mapping(row: Mapping[str, Any]) -> Event:
    """The engine event of a transaction given as a mapping (simulator output, a data-frame row).

    Keys: event_id, card_id (or entity_id), event_time (datetime, pandas Timestamp or epoch
    seconds), amount, merchant_id, merchant_category, country, channel.
    """
    entity = row["card_id"] if "card_id" in row else row["entity_id"]
    return Event(
        event_id=str(row["event_id"]),
        entity_id=str(entity),
        event_time=epoch_seconds(row["event_time"]),
        fields=_transaction_fields(
            row["amount"], row["merchant_id"], row["merchant_category"], row["country"], row["channel"]
        ),
    )


def transaction_events_from_frame(frame: pd.DataFrame) -> Iterator[Event]:
    """Engine events of every row of a transactions data frame (columns as in the mapping form)."""
    for row in frame.to_dict("records"):
        yield transaction_event_from_mapping(row)


# --- compact, deterministic encoding (for the streaming state in Redis) -----------------------


def encode_event(event: Event) -> bytes:
    """Deterministic bytes of an event: the same event always encodes to the same bytes."""
    return json.dumps(
        {"i": event.event_id, "t": event.event_time, "f": dict(event.fields)},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decode_event(entity_id: str, payload: bytes | str) -> Event:
    data = json.loads(payload)
    return Event(event_id=data["i"], entity_id=entity_id, event_time=float(data["t"]), fields=data["f"])


def decode_events(entity_id: str, payloads: Iterable[bytes | str]) -> list[Event]:
    return [decode_event(entity_id, p) for p in payloads]
