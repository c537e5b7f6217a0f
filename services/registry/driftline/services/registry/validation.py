"""Checks on what callers hand in, beyond names and artifacts (``security.py``): signatures,
reference samples, lineage, metric/param/tag maps, reasons and list limits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from driftline.kit.errors import InvalidArgument
from driftline.services.registry import security
from driftline.services.registry.domain import Lineage, ReferenceSample, Signature, TensorSpec

TRIGGERS = frozenset({"", "initial", "drift", "degradation", "manual"})
MAX_MAP_ENTRIES = 256
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 4096
MAX_REASON_CHARS = 2000
MAX_LIST = 1000


def merge_signature(given: Signature, found: Signature) -> Signature:
    """The caller's signature checked against the model's graph, or the graph's own when none is given.

    Names and datatypes must agree with the graph; a caller's shapes may be more specific.
    """
    if not given.inputs and not given.outputs:
        merged = replace(found, feature_names=given.feature_names)
    else:
        merged = Signature(
            inputs=_merge_specs(given.inputs, found.inputs, "input"),
            outputs=_merge_specs(given.outputs, found.outputs, "output"),
            feature_names=given.feature_names,
        )
    if merged.feature_names:
        if len(set(merged.feature_names)) != len(merged.feature_names):
            raise InvalidArgument("signature.feature_names has duplicates")
        if len(merged.inputs) == 1 and len(merged.inputs[0].shape) == 2:
            width = merged.inputs[0].shape[1]
            if width > 0 and width != len(merged.feature_names):
                raise InvalidArgument(
                    f"signature names {len(merged.feature_names)} features but input "
                    f"{merged.inputs[0].name!r} has {width} columns"
                )
    return merged


def _merge_specs(
    given: Iterable[TensorSpec], found: Iterable[TensorSpec], kind: str
) -> tuple[TensorSpec, ...]:
    by_name = {spec.name: spec for spec in found}
    given = tuple(given)
    if {s.name for s in given} != set(by_name):
        raise InvalidArgument(
            f"signature {kind}s {sorted(s.name for s in given)} do not match the model's {sorted(by_name)}"
        )
    merged = []
    for spec in given:
        actual = by_name[spec.name]
        if spec.datatype and spec.datatype != actual.datatype:
            raise InvalidArgument(
                f"signature {kind} {spec.name!r} is {spec.datatype} but the model's is {actual.datatype}"
            )
        merged.append(TensorSpec(spec.name, actual.datatype, spec.shape or actual.shape))
    return tuple(merged)


def check_reference(reference: ReferenceSample | None, signature: Signature) -> ReferenceSample | None:
    if reference is None or (reference.rows == 0 and not reference.values):
        return None
    width = len(reference.feature_names)
    if reference.rows <= 0 or width == 0:
        raise InvalidArgument("reference sample needs rows > 0 and feature_names")
    if len(reference.values) != reference.rows * width:
        raise InvalidArgument(
            f"reference sample has {len(reference.values)} values; rows * features = {reference.rows * width}"
        )
    if reference.scores and len(reference.scores) != reference.rows:
        raise InvalidArgument(
            f"reference sample has {len(reference.scores)} scores for {reference.rows} rows"
        )
    if signature.feature_names and tuple(reference.feature_names) != tuple(signature.feature_names):
        raise InvalidArgument("reference sample feature_names differ from signature.feature_names")
    if not all(math.isfinite(v) for v in reference.values) or not all(
        math.isfinite(v) for v in reference.scores
    ):
        raise InvalidArgument("reference sample holds NaN or infinite values")
    return reference


def check_lineage(lineage: Lineage) -> None:
    if lineage.trigger not in TRIGGERS:
        raise InvalidArgument(f"lineage.trigger must be one of {sorted(TRIGGERS - {''})}")
    if lineage.parent_version < 0:
        raise InvalidArgument("lineage.parent_version must be 0 (none) or a version number")
    if lineage.run_id:
        security.validate_name(lineage.run_id, "lineage.run_id")
    if lineage.data_start and lineage.data_end and lineage.data_start > lineage.data_end:
        raise InvalidArgument("lineage.data_start is after lineage.data_end")


def check_floats(values: Mapping[str, float], what: str) -> None:
    check_keys(values, what)
    for key, value in values.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"{what}[{key!r}] is not a finite number")


def check_strings(values: Mapping[str, str], what: str) -> None:
    check_keys(values, what)
    for key, value in values.items():
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidArgument(f"{what}[{key!r}] is longer than {MAX_VALUE_CHARS} characters")


def check_keys(values: Mapping[str, Any], what: str) -> None:
    if len(values) > MAX_MAP_ENTRIES:
        raise InvalidArgument(f"{what} has more than {MAX_MAP_ENTRIES} entries")
    for key in values:
        if not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
            raise InvalidArgument(f"{what} key {key[:40]!r} must be 1-{MAX_KEY_CHARS} characters, no NUL")


def check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_CHARS or "\x00" in reason:
        raise InvalidArgument(f"reason must be at most {MAX_REASON_CHARS} characters, without NUL")
    return reason


def list_limit(limit: int) -> int:
    return MAX_LIST if limit <= 0 or limit > MAX_LIST else limit
