"""Tensor specs and the dtype names of ONNX Runtime, numpy and the KServe v2 protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ONNX Runtime type strings of the tensor element types we serve, with their numpy dtype.
ORT_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}

#: KServe v2 datatype names (the protocol's "Tensor Data Types" table) and their numpy dtype.
KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "FP16": np.dtype(np.float16),
    "INT64": np.dtype(np.int64),
    "INT32": np.dtype(np.int32),
    "INT16": np.dtype(np.int16),
    "INT8": np.dtype(np.int8),
    "UINT64": np.dtype(np.uint64),
    "UINT32": np.dtype(np.uint32),
    "UINT16": np.dtype(np.uint16),
    "UINT8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NUMPY_TO_KSERVE: dict[np.dtype, str] = {dtype: name for name, dtype in KSERVE_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, element type and shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @property
    def datatype(self) -> str:
        """The KServe v2 datatype name."""
        return NUMPY_TO_KSERVE[self.dtype]

    @property
    def wire_shape(self) -> list[int]:
        """The shape as KServe metadata writes it: -1 for a dynamic dimension."""
        return [-1 if d is None else d for d in self.shape]

    def example(self, batch: int) -> np.ndarray:
        """A zero tensor of this spec with ``batch`` rows (other dynamic dimensions set to 1)."""
        dims = [batch] + [1 if d is None else d for d in self.shape[1:]]
        return np.zeros(dims, dtype=self.dtype)
