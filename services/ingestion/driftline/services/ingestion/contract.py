"""The data-contract engine: loads a declarative contract file and checks decoded events against it.

A contract names every field with its type, whether it is required, how it is normalised
(trim, upper, lower) and its value rules (range, enum, length, pattern, event-time window). Rules
are checked in the order the file lists the fields, after normalisation; every violation is
reported, and the first one names the event's dead-letter reason. ``docs/data-contract.md``
documents each rule and reason code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from driftline.services.ingestion.errors import ContractError

#: The contract this service enforces unless configured otherwise.
DEFAULT_CONTRACT_PATH = Path(__file__).parent / "contracts" / "transaction.v1.yaml"


class Reason(StrEnum):
    """Machine-readable dead-letter reason codes (``dlq.reason`` header)."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    EMPTY_PAYLOAD = "empty_payload"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    DUPLICATE_KEY = "duplicate_key"
    UNDECODABLE_PROTOBUF = "undecodable_protobuf"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_TIMESTAMP = "invalid_timestamp"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    PATTERN_MISMATCH = "pattern_mismatch"
    NOT_IN_ENUM = "not_in_enum"
    EVENT_TIME_IN_FUTURE = "event_time_in_future"
    EVENT_TIME_TOO_OLD = "event_time_too_old"
    UNKNOWN_FIELD = "unknown_field"


#: Violations that count as "null" in the data-quality gauges.
NULL_REASONS = frozenset({Reason.MISSING_FIELD})
#: Violations of a value's type or format.
INVALID_REASONS = frozenset({Reason.WRONG_TYPE, Reason.INVALID_TIMESTAMP, Reason.INVALID_UTF8})
#: Violations of a well-typed value's allowed values: "out of range" in the data-quality gauges.
OUT_OF_RANGE_REASONS = frozenset(
    {
        Reason.NOT_FINITE,
        Reason.OUT_OF_RANGE,
        Reason.TOO_SHORT,
        Reason.TOO_LONG,
        Reason.PATTERN_MISMATCH,
        Reason.NOT_IN_ENUM,
        Reason.EVENT_TIME_IN_FUTURE,
        Reason.EVENT_TIME_TOO_OLD,
    }
)


@dataclass(frozen=True)
class Violation:
    """One broken rule. ``field`` is None for rules about the whole event."""

    field: str | None
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail


#: A field's compiled rules: ``(value, now) -> (normalised value, None)`` or ``(None, violation)``.
Checker = Callable[[Any, datetime], tuple[Any, Violation | None]]


class FieldType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    #: An RFC 3339 date-time string with a UTC offset; becomes a UTC ``datetime``.
    TIMESTAMP = "timestamp"


class UnknownFields(StrEnum):
    REJECT = "reject"
    DROP = "drop"


_NORMALIZERS: dict[str, Callable[[str], str]] = {"trim": str.strip, "upper": str.upper, "lower": str.lower}
#: RFC 3339 date-time with a mandatory offset (the parse itself is datetime.fromisoformat's).
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_FIELD_KEYS = {
    "type",
    "required",
    "description",
    "normalize",
    "min_length",
    "max_length",
    "pattern",
    "enum",
    "minimum",
    "maximum",
    "exclusive_minimum",
    "exclusive_maximum",
    "max_future_s",
    "max_age_s",
}
#: The widest event-time window a contract may declare, in seconds.
_MAX_WINDOW_S = 1000 * 365.25 * 86_400
_CONTRACT_KEYS = {"contract", "version", "description", "max_payload_bytes", "unknown_fields", "fields"}


@dataclass(frozen=True)
class FieldSpec:
    """One field of a contract, with its rules compiled."""

    name: str
    type: FieldType
    required: bool = True
    description: str = ""
    normalize: tuple[str, ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    enum: frozenset[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    max_future: timedelta | None = None
    max_age: timedelta | None = None

    def checker(self) -> Checker:
        """This field's rules compiled into one function: ``(value, now) -> (normalised, violation)``."""
        if self.type is FieldType.STRING:
            return self._string_checker()
        if self.type is FieldType.NUMBER:
            return self._number_checker()
        return self._timestamp_checker()

    def _violation(self, reason: Reason, detail: str) -> tuple[None, Violation]:
        return None, Violation(self.name, reason, detail)

    def _string_checker(self) -> Checker:
        steps = [_NORMALIZERS[step] for step in self.normalize]
        min_length, max_length = self.min_length, self.max_length
        pattern, enum = self.pattern, self.enum
        fail = self._violation

        def check(value: Any, _now: datetime) -> tuple[Any, Violation | None]:
            if type(value) is not str:
                return fail(Reason.WRONG_TYPE, f"expected a string, got {_type_name(value)}")
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    # JSON "\ud800" escapes decode to lone surrogates that no UTF-8 consumer takes.
                    return fail(Reason.INVALID_UTF8, "contains a lone surrogate")
            for step in steps:
                value = step(value)
            if min_length is not None and len(value) < min_length:
                return fail(Reason.TOO_SHORT, f"{len(value)} characters, at least {min_length}")
            if max_length is not None and len(value) > max_length:
                return fail(Reason.TOO_LONG, f"{len(value)} characters, at most {max_length}")
            if pattern is not None and pattern.fullmatch(value) is None:
                return fail(Reason.PATTERN_MISMATCH, f"{_clip(value)!r} does not match {pattern.pattern}")
            if enum is not None and value not in enum:
                return fail(Reason.NOT_IN_ENUM, f"{_clip(value)!r} is not one of {sorted(enum)}")
            return value, None

        return check

    def _number_checker(self) -> Checker:
        minimum, maximum = self.minimum, self.maximum
        exclusive_minimum, exclusive_maximum = self.exclusive_minimum, self.exclusive_maximum
        fail = self._violation

        def check(value: Any, _now: datetime) -> tuple[Any, Violation | None]:
            # bool is an int in Python but not a number in JSON.
            if type(value) is not float and type(value) is not int:
                return fail(Reason.WRONG_TYPE, f"expected a number, got {_type_name(value)}")
            try:
                number = float(value)
            except OverflowError:
                return fail(Reason.OUT_OF_RANGE, "integer too large for a double")
            if not math.isfinite(number):
                return fail(Reason.NOT_FINITE, f"{number} is not a finite number")
            if minimum is not None and number < minimum:
                return fail(Reason.OUT_OF_RANGE, f"{number} < minimum {minimum}")
            if exclusive_minimum is not None and number <= exclusive_minimum:
                return fail(Reason.OUT_OF_RANGE, f"{number} <= exclusive minimum {exclusive_minimum}")
            if maximum is not None and number > maximum:
                return fail(Reason.OUT_OF_RANGE, f"{number} > maximum {maximum}")
            if exclusive_maximum is not None and number >= exclusive_maximum:
                return fail(Reason.OUT_OF_RANGE, f"{number} >= exclusive maximum {exclusive_maximum}")
            return number, None

        return check

    def _timestamp_checker(self) -> Checker:
        max_future, max_age = self.max_future, self.max_age
        fail = self._violation

        def check(value: Any, now: datetime) -> tuple[Any, Violation | None]:
            if type(value) is not str:
                return fail(Reason.WRONG_TYPE, f"expected an RFC 3339 string, got {_type_name(value)}")
            text = value.strip()
            if RFC3339.fullmatch(text) is None:
                return fail(Reason.INVALID_TIMESTAMP, f"{_clip(value)!r} is not RFC 3339 with a UTC offset")
            try:
                moment = datetime.fromisoformat(text.upper()).astimezone(UTC)
            except (ValueError, OverflowError) as err:
                return fail(Reason.INVALID_TIMESTAMP, f"{_clip(value)!r}: {err}")
            if max_future is not None and moment > now + max_future:
                return fail(
                    Reason.EVENT_TIME_IN_FUTURE,
                    f"{moment.isoformat()} is over {max_future.total_seconds():g}s after {now.isoformat()}",
                )
            if max_age is not None and moment < now - max_age:
                return fail(
                    Reason.EVENT_TIME_TOO_OLD,
                    f"{moment.isoformat()} is over {max_age.total_seconds():g}s before {now.isoformat()}",
                )
            return moment, None

        return check


@dataclass(frozen=True)
class Validated:
    """The outcome of checking one decoded event: normalised values and every violation."""

    values: dict[str, Any]
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Contract:
    """A versioned event contract, loaded from one declarative file."""

    name: str
    version: str
    max_payload_bytes: int
    unknown_fields: UnknownFields
    fields: tuple[FieldSpec, ...]
    description: str = ""

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @classmethod
    def load(cls, path: Path | str = DEFAULT_CONTRACT_PATH) -> Contract:
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ContractError(f"cannot read contract {path}: {err}") from err
        return cls.from_mapping(document, source=str(path))

    @classmethod
    def from_mapping(cls, document: Any, *, source: str = "<mapping>") -> Contract:
        """Build and check a contract: a mistake in the file is a ContractError now, not a surprise later."""
        if not isinstance(document, Mapping):
            raise ContractError(f"{source}: a contract is a mapping")
        _no_unknown_keys(document, _CONTRACT_KEYS, source)
        for key in ("contract", "version", "max_payload_bytes", "fields"):
            if key not in document:
                raise ContractError(f"{source}: missing {key!r}")
        max_payload = document["max_payload_bytes"]
        if type(max_payload) is not int or max_payload <= 0:
            raise ContractError(f"{source}: max_payload_bytes must be a positive integer")
        try:
            unknown = UnknownFields(document.get("unknown_fields", "reject"))
        except ValueError as err:
            raise ContractError(f"{source}: unknown_fields must be 'reject' or 'drop'") from err
        fields = document["fields"]
        if not isinstance(fields, Mapping) or not fields:
            raise ContractError(f"{source}: fields must be a non-empty mapping")
        return cls(
            name=str(document["contract"]),
            version=str(document["version"]),
            max_payload_bytes=max_payload,
            unknown_fields=unknown,
            fields=tuple(_field_spec(str(name), spec, source) for name, spec in fields.items()),
            description=str(document.get("description", "")),
        )

    def validate(self, event: Mapping[str, Any], now: datetime) -> Validated:
        """Check a decoded event (a JSON object) at time ``now``; never raises on bad input."""
        values: dict[str, Any] = {}
        violations: list[Violation] = []
        for name, required, check in self._checks:
            raw = event.get(name)
            if raw is None:
                if required:
                    what = "is null" if name in event else "is missing"
                    violations.append(Violation(name, Reason.MISSING_FIELD, f"required field {what}"))
                continue
            value, violation = check(raw, now)
            if violation is None:
                values[name] = value
            else:
                violations.append(violation)
        if self.unknown_fields is UnknownFields.REJECT:
            extra = event.keys() - self._names
            if extra:
                listed = ", ".join(sorted(map(str, extra)))
                violations.append(
                    Violation(None, Reason.UNKNOWN_FIELD, f"fields not in the contract: {_clip(listed)}")
                )
        return Validated(values, violations)

    @cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.field_names)

    @cached_property
    def _checks(self) -> tuple[tuple[str, bool, Checker], ...]:
        return tuple((f.name, f.required, f.checker()) for f in self.fields)


def _field_spec(name: str, spec: Any, source: str) -> FieldSpec:
    where = f"{source}: field {name!r}"
    if not isinstance(spec, Mapping):
        raise ContractError(f"{where}: a field is a mapping of rules")
    _no_unknown_keys(spec, _FIELD_KEYS, where)
    try:
        kind = FieldType(str(spec.get("type")))
    except ValueError as err:
        raise ContractError(f"{where}: type must be one of {[t.value for t in FieldType]}") from err
    normalize = tuple(spec.get("normalize", ()))
    if any(step not in _NORMALIZERS for step in normalize):
        raise ContractError(f"{where}: normalize steps are {_NORMALIZERS}")
    string_rules = {"normalize", "min_length", "max_length", "pattern", "enum"}
    number_rules = {"minimum", "maximum", "exclusive_minimum", "exclusive_maximum"}
    time_rules = {"max_future_s", "max_age_s"}
    allowed = {
        FieldType.STRING: string_rules,
        FieldType.NUMBER: number_rules,
        FieldType.TIMESTAMP: time_rules,
    }[kind]
    misplaced = (string_rules | number_rules | time_rules) - allowed
    if misplaced & set(spec):
        raise ContractError(f"{where}: {sorted(misplaced & set(spec))} do not apply to a {kind} field")
    try:
        pattern = re.compile(spec["pattern"]) if "pattern" in spec else None
    except re.error as err:
        raise ContractError(f"{where}: bad pattern: {err}") from err
    enum = spec.get("enum")
    if enum is not None and (not isinstance(enum, list) or not all(isinstance(v, str) for v in enum)):
        raise ContractError(f"{where}: enum must be a list of strings")

    def number(key: str) -> float | None:
        value = spec.get(key)
        if value is None:
            return None
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ContractError(f"{where}: {key} must be a finite number")
        return float(value)

    def seconds(key: str) -> timedelta | None:
        value = number(key)
        if value is not None and not 0 <= value <= _MAX_WINDOW_S:
            # Wider windows reach past the dates Python can represent, and mean nothing anyway.
            raise ContractError(f"{where}: {key} must be between 0 and {_MAX_WINDOW_S:.0f} (1,000 years)")
        return None if value is None else timedelta(seconds=value)

    def length(key: str) -> int | None:
        value = spec.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise ContractError(f"{where}: {key} must be a non-negative integer")
        return value

    required = spec.get("required", True)
    if not isinstance(required, bool):
        raise ContractError(f"{where}: required must be true or false")
    return FieldSpec(
        name=name,
        type=kind,
        required=required,
        description=str(spec.get("description", "")),
        normalize=normalize,
        min_length=length("min_length"),
        max_length=length("max_length"),
        pattern=pattern,
        enum=frozenset(enum) if enum is not None else None,
        minimum=number("minimum"),
        maximum=number("maximum"),
        exclusive_minimum=number("exclusive_minimum"),
        exclusive_maximum=number("exclusive_maximum"),
        max_future=seconds("max_future_s"),
        max_age=seconds("max_age_s"),
    )


def _no_unknown_keys(mapping: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise ContractError(f"{where}: unknown keys {sorted(map(str, unknown))}")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
