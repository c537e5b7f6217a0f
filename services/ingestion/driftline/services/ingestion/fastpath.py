"""A contract compiled into one straight-line function, for events that are already canonical.

Almost every event a healthy producer sends is valid and already normalised (trimmed, in the
right case). For those, checking field by field through the general engine costs more than
decoding the JSON. ``compile_fast_path`` turns the contract's rules into a single generated
function that accepts such an event outright and returns None for anything else: a missing,
optional or extra field, a value that normalisation would change, non-ASCII text, any rule
broken. The general engine (:meth:`Contract.validate`) then decides, and stays the reference:
the fast path only ever accepts what the engine accepts, with the same values (a property test
holds the two to that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from driftline.services.ingestion.contract import RFC3339, Contract, FieldSpec, FieldType, UnknownFields

FastPath = Callable[[Mapping[str, Any], datetime], "dict[str, Any] | None"]


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
