"""The contract compiled for the native batch fast path (``driftline_fastgate``, in Rust).

The native gate reads a whole batch of Kafka messages in one call and returns, for every message
that is canonical JSON satisfying the contract, its clean protobuf event ready to produce, and
None for anything else, which the Python gate then decides (docs/adr/0006). This module is the
one place that turns a :class:`Contract` and the ``CleanTransaction`` schema into the native
gate's rules, with the same reading of each rule as the JSON fast path (:mod:`.fastpath`): the
native gate holds no rule of its own. A contract with a rule it cannot express exactly (a regex
whose meaning could differ between Python and Rust, a bound a double cannot hold, a clean-event
field it does not know how to fill) gets no native gate: every message then takes the Python
path, which is slower but decides the same.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import structlog
from driftline_fastgate import BatchGate
from google.protobuf.descriptor import FieldDescriptor

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE
from driftline.services.ingestion.contract import Contract, FieldSpec, FieldType
from driftline.services.ingestion.fastpath import enum_values
from driftline.services.ingestion.gate import JSON

log = structlog.get_logger(__name__)

_CLEAN = transaction_pb2.CleanTransaction.DESCRIPTOR
_TIMESTAMP = "google.protobuf.Timestamp"
#: The clean event's lineage, which the gate fills from the message and the batch's clock.
_LINEAGE = {
    "source_topic": FieldDescriptor.TYPE_STRING,
    "source_partition": FieldDescriptor.TYPE_INT32,
    "source_offset": FieldDescriptor.TYPE_INT64,
    "ingested_at": _TIMESTAMP,
}
_CLEAN_TYPE = {
    FieldType.STRING: FieldDescriptor.TYPE_STRING,
    FieldType.NUMBER: FieldDescriptor.TYPE_DOUBLE,
    FieldType.TIMESTAMP: _TIMESTAMP,
}
#: Syntax that Python's ``re`` and Rust's ``regex`` read differently (Rust's class set
#: operations, POSIX classes and word-boundary escapes, Python's ``{,n}``), or that only one of
#: them has.
_AMBIGUOUS_REGEX = (
    "[[",
    "&&",
    "--",
    "~~",
    "{,",
    "\\Z",
    "\\z",
    "\\<",
    "\\>",
    "\\b{",
    "\\B{",
    "(?<",
    "(?=",
    "(?!",
    "(?#",
    "\\u",
    "\\U",
    "\\N",
)
#: An inline verbose flag: Rust ignores whitespace inside character classes there, Python does not.
_VERBOSE_FLAG = re.compile(r"\(\?[a-zA-Z-]*x")


class Unsupported(ValueError):
    """A contract rule the native gate cannot express exactly."""


def compile_batch_gate(contract: Contract) -> BatchGate | None:
    """The native gate for ``contract``, or None (logged) when one of its rules cannot be expressed."""
    try:
        rules = [_field_rules(spec) for spec in contract.fields]
        topic, partition, offset, ingested_at = (_clean_number(name, kind) for name, kind in _LINEAGE.items())
        filled = {spec.name for spec in contract.fields} | set(_LINEAGE)
        left = sorted(f.name for f in _CLEAN.fields if f.name not in filled)
        if left:
            raise Unsupported(f"the clean event's fields {left} have no value in the contract")
        return BatchGate(
            rules,
            id_field="event_id",
            key_field="card_id",
            max_payload_bytes=contract.max_payload_bytes,
            lineage=(topic, partition, offset, ingested_at),
            content_type_header=CONTENT_TYPE,
            json_media_type=JSON.encode(),
        )
    except (Unsupported, ValueError, OverflowError) as err:
        log.warning(
            "native_gate_unavailable", contract=contract.name, version=contract.version, reason=str(err)
        )
        return None


def _clean_number(name: str, kind: Any) -> int:
    field = _CLEAN.fields_by_name.get(name)
    if field is None:
        raise Unsupported(f"the clean event has no field {name!r}")
    if field.is_repeated or field.containing_oneof is not None:
        raise Unsupported(f"the clean event's {name!r} is repeated or in a oneof")
    if field.message_type is None and field.has_presence:
        # The native encoder leaves default values out, as proto3 does without presence.
        raise Unsupported(f"the clean event's {name!r} tracks presence")
    actual = field.message_type.full_name if field.message_type is not None else field.type
    if actual != kind:
        raise Unsupported(f"the clean event's {name!r} is not a {kind}")
    return int(field.number)


def _field_rules(spec: FieldSpec) -> dict[str, Any]:
    rules: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.type.value,
        "number": _clean_number(spec.name, _CLEAN_TYPE[spec.type]),
        "allowed": None,
        "trim": "trim" in spec.normalize,
        "upper": "upper" in spec.normalize,
        "lower": "lower" in spec.normalize,
        "min_length": spec.min_length,
        "max_length": spec.max_length,
        "pattern": None,
        "ge": _bound(spec.minimum),
        "le": _bound(spec.maximum),
        "gt": _bound(spec.exclusive_minimum),
        "lt": _bound(spec.exclusive_maximum),
        "max_future_us": _micros(spec.max_future),
        "max_age_us": _micros(spec.max_age),
    }
    if not spec.name.isascii():
        raise Unsupported(f"field name {spec.name!r} is not ASCII")
    allowed = enum_values(spec)
    if allowed is not None:
        rules["allowed"] = list(allowed)
    elif spec.pattern is not None:
        rules["pattern"] = _portable_pattern(spec.pattern)
    return rules


def _portable_pattern(pattern: re.Pattern[str]) -> str:
    if pattern.flags != re.UNICODE:
        raise Unsupported(f"pattern {pattern.pattern!r} has flags")
    text = pattern.pattern
    if not text.isascii() or any(token in text for token in _AMBIGUOUS_REGEX) or _VERBOSE_FLAG.search(text):
        raise Unsupported(f"pattern {text!r} may mean something else in Rust's regex")
    return text


def _bound(value: float | None) -> float | None:
    if value is None:
        return None
    if float(value) != value:
        raise Unsupported(f"bound {value!r} is not exactly a double")
    return float(value)


def _micros(delta: timedelta | None) -> int | None:
    if delta is None:
        return None
    micros = delta // timedelta(microseconds=1)
    if abs(micros) >= 2**63:
        raise Unsupported(f"event-time window {delta} does not fit 64-bit microseconds")
    return micros
