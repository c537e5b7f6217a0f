"""Input checks before anything reaches a model: names, dtype, shape, NaN and Inf.

Every failure is an ``InvalidInput`` (gRPC INVALID_ARGUMENT) that says what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from driftline.services.inference.errors import InvalidInput
from driftline.services.inference.tensors import KSERVE_TO_NUMPY, TensorSpec


def decode_tensor(
    name: str, datatype: str, shape: Sequence[int], *, raw: bytes | None, values: Sequence
) -> np.ndarray:
    """A KServe v2 tensor from raw little-endian bytes or from a typed ``contents`` list."""
    dtype = KSERVE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name}: unsupported datatype {datatype!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name}: {len(raw)} bytes do not hold shape {list(shape)} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    else:
        if len(values) != count:
            raise InvalidInput(f"input {name}: {len(values)} values do not fill shape {list(shape)}")
        array = np.asarray(values, dtype=dtype)
    return array.reshape(tuple(shape))


def validate_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> int:
    """Check ``feeds`` against the model's input specs; return the batch size (rows)."""
    expected = {spec.name for spec in specs}
    unknown = sorted(set(feeds) - expected)
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    rows: int | None = None
    for spec in specs:
        array = feeds.get(spec.name)
        if array is None:
            raise InvalidInput(f"missing input {spec.name}")
        if array.dtype != spec.dtype:
            raise InvalidInput(f"input {spec.name} is {array.dtype}, the model expects {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise InvalidInput(
                f"input {spec.name} has shape {list(array.shape)}, the model expects {spec.wire_shape}"
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if want is not None and got != want:
                raise InvalidInput(
                    f"input {spec.name} has {got} on axis {axis}, the model expects {want} "
                    f"(shape {list(array.shape)} vs {spec.wire_shape})"
                )
        if array.ndim == 0 or array.shape[0] == 0:
            raise InvalidInput(f"input {spec.name} holds no rows")
        if rows is None:
            rows = int(array.shape[0])
        elif array.shape[0] != rows:
            raise InvalidInput(f"inputs disagree on the batch size ({rows} vs {array.shape[0]})")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = np.argwhere(~np.isfinite(array))[0].tolist()
            raise InvalidInput(f"input {spec.name} holds NaN or Inf (first at index {bad})")
    if rows is None:
        raise InvalidInput("no inputs")
    return rows
