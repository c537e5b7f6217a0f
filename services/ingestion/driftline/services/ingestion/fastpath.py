"""A contract compiled into fast paths, for events that are already canonical.

Almost every event a healthy producer sends is valid and already normalised (trimmed, in the
right case). For those, checking field by field through the general engine costs more than
decoding the JSON. Two compiled forms accept such an event outright and return None for anything
else (a missing, optional or extra field, a value that normalisation would change, non-ASCII
text, any rule broken):

* ``compile_json_fast_path`` decodes and checks JSON bytes in one pass of msgspec's C decoder,
  with the contract's types, lengths, patterns, enums and ranges compiled into its schema;
* ``compile_fast_path`` checks an already decoded event (protobuf input, or JSON the first path
  declined) in one generated straight-line function.

The general engine (:meth:`Contract.validate`) then decides, and stays the reference: a fast path
only ever accepts what the engine accepts, with the same values (property tests hold them to it).
The consumer runs the native gate (:mod:`.native`) before both, a batch at a time; these paths
serve when it is off or the contract cannot be compiled for it, and for protobuf input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypedDict, cast

import msgspec

from driftline.services.ingestion.contract import (
    _NORMALIZERS,
    RFC3339,
    Contract,
    FieldSpec,
    FieldType,
    UnknownFields,
)

FastPath = Callable[[Mapping[str, Any], datetime], "dict[str, Any] | None"]
JsonFastPath = Callable[[bytes, datetime], "dict[str, Any] | None"]


def compile_json_fast_path(contract: Contract) -> JsonFastPath:
    """The contract as a msgspec schema: ``(json bytes, now) -> values`` for canonical events, else None.

    msgspec keeps the last of repeated keys and skips unknown ones, where the contract
    dead-letters both; a key count rules them out without a second parse. The payload is ASCII
    without escapes, so every comma in it is either a separator between two of the object's
    keys (values are scalars: the schema has no containers) or a character of a string value
    the decoder returned. An object whose commas, less those in its decoded string values,
    number exactly ``fields - 1`` therefore has exactly one key per field, none repeated, none
    unknown. Anything else goes to the general path, which names the reason.
    """
    fields = contract.fields
    if not fields or any(
        "," in spec.name
        or not spec.name.isascii()
        or (spec.pattern is not None and spec.pattern.flags != re.UNICODE)
        for spec in fields
    ):
        return lambda _payload, _now: None  # rules the schema cannot express: the general path only
    schema = TypedDict(  # type: ignore[misc]
        f"{contract.name}_v{contract.version}", {spec.name: _schema_type(spec) for spec in fields}
    )
    decode = msgspec.json.Decoder(schema).decode
    separators = len(fields) - 1
    strings = tuple(spec.name for spec in fields if spec.type is not FieldType.NUMBER)
    # Normalisation a decoded value must already satisfy (enums of canonical values imply it).
    # Trimming is checked only when the payload has a space: JSON strings cannot hold raw control
    # characters, and this payload has no escapes, so a space is the only whitespace there can be.
    trimmed, cased = [], []
    for spec in fields:
        if spec.type is FieldType.STRING and enum_values(spec) is None:
            trimmed += [spec.name] if "trim" in spec.normalize else []
            cased += [(spec.name, _NORMALIZERS[step]) for step in spec.normalize if step != "trim"]
    # Every pattern (and RFC 3339 for timestamps) in one regex over the values joined with NUL: a
    # decoded value cannot contain NUL, so each segment matches exactly one value. One call into
    # ``re`` instead of one per field (msgspec's own pattern constraint calls back per field).
    matched = [
        (spec.name, spec.pattern.pattern if spec.pattern is not None else RFC3339.pattern)
        for spec in fields
        if spec.type is FieldType.TIMESTAMP or (spec.pattern is not None and enum_values(spec) is None)
    ]
    matched_names = tuple(name for name, _ in matched)
    all_match = re.compile("\\x00".join(f"(?:{pattern})" for _, pattern in matched)).fullmatch
    timestamps = tuple(
        (spec.name, spec.max_future, spec.max_age) for spec in fields if spec.type is FieldType.TIMESTAMP
    )
    fromisoformat = datetime.fromisoformat
    # The event-time window's bounds, computed once per clock reading (the handler reads the
    # clock once per batch).
    clock: datetime | None = None
    bounds: list[tuple[str, datetime | None, datetime | None]] = []

    def fast(payload: bytes, now: datetime) -> dict[str, Any] | None:
        nonlocal clock, bounds
        if not payload.isascii() or b"\\" in payload:
            return None
        try:
            event = cast(dict[str, Any], decode(payload))
        except msgspec.DecodeError:  # malformed, or a rule broken: the general path says which
            return None
        commas = payload.count(b",")
        if commas != separators:
            commas -= sum(event[name].count(",") for name in strings)
            if commas != separators:
                return None
        if b" " in payload:
            for name in trimmed:
                if event[name].strip() != event[name]:
                    return None
        for name, step in cased:
            if step(event[name]) != event[name]:
                return None
        if matched_names and all_match("\x00".join([event[name] for name in matched_names])) is None:
            return None
        if clock is not now:
            clock, bounds = (
                now,
                [
                    (name, None if future is None else now + future, None if age is None else now - age)
                    for name, future, age in timestamps
                ],
            )
        for name, latest, earliest in bounds:
            try:
                moment = fromisoformat(event[name].upper()).astimezone(UTC)
            except (ValueError, OverflowError):
                return None
            if (latest is not None and moment > latest) or (earliest is not None and moment < earliest):
                return None
            event[name] = moment
        return event

    return fast


def enum_values(spec: FieldSpec) -> tuple[str, ...] | None:
    """The canonical values an enum field accepts (None when it has no enum).

    A canonical value is one its normalisation leaves unchanged; the engine accepts it when it
    is in the enum and passes the field's other rules. An enum value normalisation would change
    can never be accepted (the engine compares normalised values), so it is not among them.
    """
    if spec.enum is None:
        return None
    steps = [_NORMALIZERS[step] for step in spec.normalize]
    checker = spec.checker()
    now = datetime.now(UTC)
    return tuple(
        sorted(
            value
            for value in spec.enum
            if all(step(value) == value for step in steps) and checker(value, now)[1] is None
        )
    )


def _schema_type(spec: FieldSpec) -> Any:
    """The msgspec type of one field: its JSON type with the contract's rules as constraints."""
    if spec.type is FieldType.NUMBER:
        bounds = {
            "ge": spec.minimum,
            "le": spec.maximum,
            "gt": spec.exclusive_minimum,
            "lt": spec.exclusive_maximum,
        }
        return Annotated[float, msgspec.Meta(**{k: v for k, v in bounds.items() if v is not None})]
    if spec.type is FieldType.TIMESTAMP:
        return str
    enum = enum_values(spec)
    if enum is not None:
        return Literal[enum] if enum else Annotated[str, msgspec.Meta(pattern=r"\A(?!)")]
    lengths = {"min_length": spec.min_length, "max_length": spec.max_length}
    return Annotated[str, msgspec.Meta(**{k: v for k, v in lengths.items() if v is not None})]


def compile_fast_path(contract: Contract) -> FastPath:
    """The contract as one function: ``(event, now) -> values`` for canonical events, else None."""
    namespace: dict[str, Any] = {
        "_isfinite": math.isfinite,
        "_fromisoformat": datetime.fromisoformat,
        "_UTC": UTC,
        "_rfc3339": RFC3339.fullmatch,
    }
    body = []
    if contract.unknown_fields is UnknownFields.REJECT:
        body.append(f"if len(event) != {len(contract.fields)}: return None")
    for i, spec in enumerate(contract.fields):
        body += _field_lines(i, spec, namespace)
    returned = ", ".join(f"{spec.name!r}: v{i}" for i, spec in enumerate(contract.fields))
    body.append(f"return {{{returned}}}")
    source = "def fast(event, now):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<fast path of {contract.name}.v{contract.version}>", "exec"), namespace)
    generated = namespace["fast"]

    def fast(event: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] | None = generated(event, now)
        except (ValueError, OverflowError):
            return None  # an unparsable date or a huge integer: the engine names the reason
        return result

    return fast


def _field_lines(i: int, spec: FieldSpec, namespace: dict[str, Any]) -> list[str]:
    v = f"v{i}"
    lines = [f"{v} = event.get({spec.name!r})", f"if {v} is None: return None"]
    if spec.type is FieldType.STRING:
        lines += [f"if type({v}) is not str or not {v}.isascii(): return None"]
        for step in spec.normalize:
            method = {"trim": "strip", "upper": "upper", "lower": "lower"}[step]
            lines.append(f"if {v}.{method}() != {v}: return None")
        if spec.min_length is not None:
            lines.append(f"if len({v}) < {spec.min_length}: return None")
        if spec.max_length is not None:
            lines.append(f"if len({v}) > {spec.max_length}: return None")
        if spec.pattern is not None:
            namespace[f"_pattern{i}"] = spec.pattern.fullmatch
            lines.append(f"if _pattern{i}({v}) is None: return None")
        if spec.enum is not None:
            namespace[f"_enum{i}"] = spec.enum
            lines.append(f"if {v} not in _enum{i}: return None")
    elif spec.type is FieldType.NUMBER:
        lines += [
            f"if type({v}) is int: {v} = float({v})",
            f"elif type({v}) is not float: return None",
            f"if not _isfinite({v}): return None",
        ]
        for bound, op in (
            (spec.minimum, "<"),
            (spec.exclusive_minimum, "<="),
            (spec.maximum, ">"),
            (spec.exclusive_maximum, ">="),
        ):
            if bound is not None:
                lines.append(f"if {v} {op} {bound!r}: return None")
    else:
        lines += [
            f"if type({v}) is not str or _rfc3339({v}) is None: return None",
            f"{v} = _fromisoformat({v}.upper()).astimezone(_UTC)",
        ]
        if spec.max_future is not None:
            namespace[f"_future{i}"] = spec.max_future
            lines.append(f"if {v} > now + _future{i}: return None")
        if spec.max_age is not None:
            namespace[f"_age{i}"] = spec.max_age
            lines.append(f"if {v} < now - _age{i}: return None")
    return lines
