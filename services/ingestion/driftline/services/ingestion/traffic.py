"""Raw messages for ``driftline produce``: simulated transactions with injected garbage and
duplicates, or a JSONL/CSV file replayed as is.

Every simulated message says what it is (valid, duplicate, garbage) and, for garbage, which
reason code the contract will dead-letter it with, so a test can predict ingestion's accounting
exactly.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE, JSON, PROTOBUF, Headers
from driftline.services.ingestion.contract import Reason
from driftline.simulator import SimEvent, SimulatorConfig, TransactionSimulator, rfc3339


class Kind(StrEnum):
    VALID = "valid"
    DUPLICATE = "duplicate"
    GARBAGE = "garbage"
    #: A line or row of a replayed file: its fate is whatever the contract says.
    REPLAY = "replay"


class Encoding(StrEnum):
    JSON = "json"
    PROTOBUF = "protobuf"


@dataclass(frozen=True)
class RawMessage:
    """One message for the raw-transactions topic."""

    value: bytes
    key: bytes | None
    headers: Headers
    kind: Kind
    #: For garbage: the reason code ingestion will dead-letter it with.
    expected_reason: Reason | None = None
    #: For valid simulated events: the event and its ground truth (for feedback).
    event: SimEvent | None = None


def encode(event: dict[str, Any], encoding: Encoding = Encoding.JSON) -> tuple[bytes, Headers]:
    """A contract event as message bytes and the content-type header that goes with them."""
    if encoding is Encoding.PROTOBUF:
        return transaction_pb2.RawTransaction(**event).SerializeToString(), [
            (CONTENT_TYPE, PROTOBUF.encode())
        ]
    return _json(event), [(CONTENT_TYPE, JSON.encode())]


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- garbage ---------------------------------------------------------------------------------

_Corruption = Callable[[random.Random, dict[str, Any], datetime], tuple[bytes, Headers]]
_JSON_HEADERS: Headers = [(CONTENT_TYPE, JSON.encode())]


def _with(event: dict[str, Any], **changes: Any) -> tuple[bytes, Headers]:
    return _json({**event, **changes}), list(_JSON_HEADERS)


def _truncated(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    data = _json(event)
    return data[: rng.randint(1, len(data) - 1)], list(_JSON_HEADERS)


def _not_json(rng: random.Random, _event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return rng.choice([b"hello, world", b"<txn amount='1'/>", b"{'single': 'quotes'}", b"{,}"]), list(
        _JSON_HEADERS
    )


def _invalid_utf8(_rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    data = _json(event).replace(event["merchant_id"].encode(), b"m-\xff\xfe-bad", 1)
    return data, list(_JSON_HEADERS)


def _not_an_object(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _json(rng.choice([[event], 42, "a transaction", None])), list(_JSON_HEADERS)


def _missing(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    dropped = rng.choice(sorted(event))
    return _json({k: v for k, v in event.items() if k != dropped}), list(_JSON_HEADERS)


def _unknown(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, **{rng.choice(["cvv", "merchant_catgory", "note"]): "x"})


def _wrong_type(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    changes: list[dict[str, Any]] = [{"amount": str(event["amount"])}, {"card_id": 12345}, {"channel": True}]
    return _with(event, **rng.choice(changes))


def _not_finite(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, amount=rng.choice([float("nan"), float("inf"), float("-inf")]))


def _out_of_range(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, amount=rng.choice([-event["amount"], 0, 1e9]))


def _not_in_enum(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, **rng.choice([{"channel": "telepathy"}, {"merchant_category": "weapons"}]))


def _too_long(_rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, merchant_id="m" * 300)


def _too_short(_rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, card_id="   ")


def _pattern(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, **rng.choice([{"country": "USA"}, {"currency": "$"}]))


def _bad_timestamp(rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, event_time=rng.choice(["yesterday", "2025-13-45T00:00:00Z", "2025-01-01T00:00:00"]))


def _future(_rng: random.Random, event: dict[str, Any], now: datetime) -> tuple[bytes, Headers]:
    return _with(event, event_time=rfc3339(now + timedelta(days=1)))


def _too_old(_rng: random.Random, event: dict[str, Any], now: datetime) -> tuple[bytes, Headers]:
    return _with(event, event_time=rfc3339(now - timedelta(days=30)))


def _duplicate_key(_rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return b'{"amount":1,' + _json(event)[1:], list(_JSON_HEADERS)


def _too_large(_rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _with(event, padding="x" * 20_000)


def _empty(_rng: random.Random, _event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return b"", list(_JSON_HEADERS)


def _content_type(_rng: random.Random, event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return _json(event), [(CONTENT_TYPE, b"text/csv")]


def _bad_protobuf(rng: random.Random, _event: dict[str, Any], _now: datetime) -> tuple[bytes, Headers]:
    return rng.choice([b"\x0a\xff", b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe"]), [
        (CONTENT_TYPE, PROTOBUF.encode())
    ]


#: Every kind of garbage the generator injects, with the reason ingestion gives it.
CORRUPTIONS: tuple[tuple[Reason, _Corruption], ...] = (
    (Reason.MALFORMED_JSON, _truncated),
    (Reason.MALFORMED_JSON, _not_json),
    (Reason.INVALID_UTF8, _invalid_utf8),
    (Reason.NOT_AN_OBJECT, _not_an_object),
    (Reason.MISSING_FIELD, _missing),
    (Reason.UNKNOWN_FIELD, _unknown),
    (Reason.WRONG_TYPE, _wrong_type),
    (Reason.NOT_FINITE, _not_finite),
    (Reason.OUT_OF_RANGE, _out_of_range),
    (Reason.NOT_IN_ENUM, _not_in_enum),
    (Reason.TOO_LONG, _too_long),
    (Reason.TOO_SHORT, _too_short),
    (Reason.PATTERN_MISMATCH, _pattern),
    (Reason.INVALID_TIMESTAMP, _bad_timestamp),
    (Reason.EVENT_TIME_IN_FUTURE, _future),
    (Reason.EVENT_TIME_TOO_OLD, _too_old),
    (Reason.DUPLICATE_KEY, _duplicate_key),
    (Reason.PAYLOAD_TOO_LARGE, _too_large),
    (Reason.EMPTY_PAYLOAD, _empty),
    (Reason.UNSUPPORTED_CONTENT_TYPE, _content_type),
    (Reason.UNDECODABLE_PROTOBUF, _bad_protobuf),
)


def garbage(rng: random.Random, event: dict[str, Any], now: datetime) -> tuple[bytes, Headers, Reason]:
    """A corrupted copy of ``event`` and the reason code ingestion (clock ``now``) will give it."""
    reason, corrupt = rng.choice(CORRUPTIONS)
    value, headers = corrupt(rng, event, now)
    return value, headers, reason


# --- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficConfig:
    """A simulated source: the simulator's config plus what to inject."""

    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    #: Messages in total, garbage and duplicates included.
    count: int = 10_000
    garbage_rate: float = 0.0
    duplicate_rate: float = 0.0
    encoding: Encoding = Encoding.JSON

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")
        if min(self.garbage_rate, self.duplicate_rate) < 0 or self.garbage_rate + self.duplicate_rate >= 1:
            raise ValueError("garbage_rate and duplicate_rate must be >= 0 and sum to less than 1")


def simulated(config: TrafficConfig, *, now: datetime) -> Iterator[RawMessage]:
    """Deterministic for a config and ``now`` (the clock garbage timestamps are relative to).

    Garbage replaces the simulated event of its slot (which is then never sent nor labelled);
    a duplicate re-sends the exact bytes of one of the last 1,000 valid messages.
    """
    rng = random.Random(config.simulator.seed * 1_000_003 + 17)
    events = TransactionSimulator(config.simulator).events(config.count)
    recent: deque[RawMessage] = deque(maxlen=1000)
    for _ in range(config.count):
        r = rng.random()
        if r < config.duplicate_rate and recent:
            yield replace(rng.choice(recent), kind=Kind.DUPLICATE, event=None)
            continue
        ev = next(events)
        key = ev.card_id.encode()
        if r < config.duplicate_rate + config.garbage_rate:
            value, headers, reason = garbage(rng, ev.event, now)
            yield RawMessage(value, key, headers, Kind.GARBAGE, expected_reason=reason)
            continue
        value, headers = encode(ev.event, config.encoding)
        message = RawMessage(value, key, headers, Kind.VALID, event=ev)
        recent.append(message)
        yield message


def replay(path: Path) -> Iterator[RawMessage]:
    """A JSONL file (one raw message per line, sent byte for byte, garbage included) or a CSV file
    (one event per row; ``amount`` becomes a number, empty cells are left out)."""
    if path.suffix.lower() == ".csv":
        yield from _replay_csv(path)
    else:
        yield from _replay_jsonl(path)


def _card_key(obj: Any) -> bytes | None:
    card = obj.get("card_id") if isinstance(obj, dict) else None
    return card.strip().encode() if isinstance(card, str) else None


def _replay_jsonl(path: Path) -> Iterator[RawMessage]:
    with path.open("rb") as lines:
        for line in lines:
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            try:
                key = _card_key(json.loads(value))
            except ValueError:
                key = None
            yield RawMessage(value, key, list(_JSON_HEADERS), Kind.REPLAY)


def _replay_csv(path: Path) -> Iterator[RawMessage]:
    with path.open(newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            event: dict[str, Any] = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if "amount" in event:
                # An amount that is not a number stays a string: the contract rejects it as wrong_type.
                with contextlib.suppress(ValueError):
                    event["amount"] = float(event["amount"])
            yield RawMessage(_json(event), _card_key(event), list(_JSON_HEADERS), Kind.REPLAY)
