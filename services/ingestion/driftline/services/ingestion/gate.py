"""The transport-free core of ingestion: bytes in, a clean transaction or a rejection out.

``Gate.examine`` decodes a payload (JSON by default, ``RawTransaction`` protobuf when the
content type says so), checks it against the contract and normalises it. It never raises on bad
input: every byte string becomes either :class:`Accepted` or :class:`Rejected` with a reason code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from driftline.events.v1 import transaction_pb2
from driftline.services.ingestion.contract import Contract, Reason, Violation
from driftline.services.ingestion.fastpath import compile_fast_path, compile_json_fast_path
from driftline.services.ingestion.quality import QualityWindow

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
_JSON_BYTES = JSON.encode()
_PROTOBUF_BYTES = PROTOBUF.encode()

_PROTO_FIELDS = transaction_pb2.RawTransaction.DESCRIPTOR.fields
_STRING = _PROTO_FIELDS[0].TYPE_STRING


class Accepted(NamedTuple):
    """A valid event's normalised values (``event_time`` a UTC datetime)."""

    values: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.values["event_id"])


class Rejected(NamedTuple):
    """An invalid event's dead-letter reason code, and what exactly was wrong."""

    reason: Reason
    detail: str


Verdict = Accepted | Rejected


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"key {key[:80]!r} appears more than once")
            seen.add(key)
    return obj


# Built once: json.loads would build a decoder per call when given a hook.
_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicate_keys)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (the native gate's clock)."""
    return (moment - _EPOCH) // _MICROSECOND


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime (Timestamp.FromDatetime is several times slower)."""
    delta = moment - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def media_type(content_type: str | bytes | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; absent or empty -> JSON."""
    if content_type is None or content_type == _JSON_BYTES:
        return JSON
    if content_type == _PROTOBUF_BYTES:
        return PROTOBUF
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media = content_type.split(";", 1)[0].strip().lower()
    return media or JSON


class Gate:
    """Decodes, validates and normalises raw transactions against one contract."""

    def __init__(self, contract: Contract, quality: QualityWindow | None = None) -> None:
        self.contract = contract
        self.quality = quality
        self._fast = compile_fast_path(contract)
        self._fast_json = compile_json_fast_path(contract)

    def examine(
        self,
        payload: bytes | None,
        content_type: str | bytes | None,
        now: datetime,
        *,
        canonical_json_declined: bool = False,
        observed: list[Sequence[Violation]] | None = None,
    ) -> Verdict:
        """The verdict on one message; ``now`` is the clock the event-time window uses.

        ``observed``: where to put what the data-quality window is to record for this message
        (its violations; none for a valid event), for a caller that records it once the
        message's outcome is final; None records it in the window at once.

        ``canonical_json_declined``: the native gate, which accepts every valid canonical JSON
        event, already declined this message. A JSON payload then skips the fast paths, which
        only accept canonical events too: it is invalid (the common case, where they would be
        wasted work) or valid but not canonical, which the engine decides.
        """
        if payload is None or len(payload) == 0:
            return Rejected(Reason.EMPTY_PAYLOAD, "the message has no value")
        if len(payload) > self.contract.max_payload_bytes:
            return Rejected(
                Reason.PAYLOAD_TOO_LARGE,
                f"{len(payload)} bytes, at most {self.contract.max_payload_bytes}",
            )
        media = media_type(content_type)
        fast = True
        if media == JSON:
            fast = not canonical_json_declined
            values = self._fast_json(payload, now) if fast else None
            if values is not None:
                self._observe((), observed)
                return Accepted(values)
            decoded = self._decode_json(payload)
        elif media == PROTOBUF:
            decoded = self._decode_protobuf(payload)
        else:
            return Rejected(
                Reason.UNSUPPORTED_CONTENT_TYPE, f"content-type {media[:80]!r}; use {JSON} or {PROTOBUF}"
            )
        if isinstance(decoded, Rejected):
            return decoded
        values = self._fast(decoded, now) if fast else None
        if values is not None:
            self._observe((), observed)
            return Accepted(values)
        result = self.contract.validate(decoded, now)
        self._observe(result.violations, observed)
        if result.violations:
            return _rejection(result.violations)
        return Accepted(result.values)

    def _observe(self, violations: Sequence[Violation], observed: list[Sequence[Violation]] | None) -> None:
        if observed is not None:
            observed.append(violations)
        elif self.quality is not None:
            self.quality.observe(violations)

    def _decode_json(self, payload: bytes) -> dict[str, Any] | Rejected:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            return Rejected(Reason.INVALID_UTF8, f"byte {err.start}: {err.reason}")
        try:
            obj = _DECODER.decode(text)
        except _DuplicateKey as err:
            return Rejected(Reason.DUPLICATE_KEY, str(err))
        except json.JSONDecodeError as err:
            return Rejected(Reason.MALFORMED_JSON, f"line {err.lineno} column {err.colno}: {err.msg}")
        except (ValueError, RecursionError) as err:
            # Integers beyond Python's digit limit, or nesting deeper than the parser's stack.
            return Rejected(Reason.MALFORMED_JSON, f"{type(err).__name__}: {str(err)[:200]}")
        if not isinstance(obj, dict):
            return Rejected(Reason.NOT_AN_OBJECT, f"the JSON document is {type(obj).__name__}, not an object")
        return obj

    def _decode_protobuf(self, payload: bytes) -> dict[str, Any] | Rejected:
        message = transaction_pb2.RawTransaction()
        try:
            message.ParseFromString(payload)
        except DecodeError as err:
            return Rejected(Reason.UNDECODABLE_PROTOBUF, f"not a driftline.events.v1.RawTransaction: {err}")
        # proto3 cannot tell an absent string from an empty one: both are "missing". Numbers are
        # always present (an absent amount reads 0.0, which the range rules reject).
        obj: dict[str, Any] = {}
        for fd in _PROTO_FIELDS:
            value = getattr(message, fd.name)
            if fd.type != _STRING or value != "":
                obj[fd.name] = value
        unknown = UnknownFieldSet(message)
        if len(unknown):
            # Surface them to the contract as fields it does not know, so its unknown_fields policy applies.
            for i in range(len(unknown)):
                obj[f"#{unknown[i].field_number}"] = None
        return obj


def _rejection(violations: list[Violation]) -> Rejected:
    first = violations[0]
    detail = "; ".join(str(v) for v in violations)
    return Rejected(first.reason, detail[:1000])


def to_clean(
    values: dict[str, Any],
    *,
    ingested_at: Timestamp,
    source_topic: str,
    source_partition: int,
    source_offset: int,
) -> transaction_pb2.CleanTransaction:
    """The clean event for an accepted one, with its lineage."""
    text = values.get
    clean = transaction_pb2.CleanTransaction(
        event_id=values["event_id"],
        card_id=values["card_id"],
        merchant_id=text("merchant_id", ""),
        amount=text("amount", 0.0),
        currency=text("currency", ""),
        merchant_category=text("merchant_category", ""),
        country=text("country", ""),
        channel=text("channel", ""),
        contract_version=text("contract_version", ""),
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
    )
    # Set in place: a Timestamp passed to the constructor is built, then copied.
    delta = values["event_time"] - _EPOCH
    event_time = clean.event_time
    event_time.seconds = delta.days * 86_400 + delta.seconds
    event_time.nanos = delta.microseconds * 1000
    clean.ingested_at.CopyFrom(ingested_at)
    return clean
