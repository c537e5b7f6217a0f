from __future__ import annotations

import grpc
import numpy as np
import pytest

from driftline.kit.errors import InvalidArgument
from driftline.kserve.v2 import grpc_predict_v2_pb2 as pb
from driftline.services.inference.errors import InvalidInput
from driftline.services.inference.kserve import decode_inputs
from driftline.services.inference.tensors import TensorSpec
from driftline.services.inference.validation import decode_tensor, validate_feeds

SPECS = [TensorSpec("input", np.dtype(np.float32), (None, 3))]


def good(rows: int = 2) -> np.ndarray:
    return np.ones((rows, 3), dtype=np.float32)


def test_valid_feeds_return_their_batch_size():
    assert validate_feeds(SPECS, {"input": good(5)}) == 5


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"input": np.ones((2, 4), np.float32)}, "axis 1"),
        ({"input": np.ones((6,), np.float32)}, "shape"),
        ({"input": np.ones((2, 3, 1), np.float32)}, "shape"),
        ({"input": np.ones((2, 3), np.float64)}, "float64"),
        ({"input": np.ones((2, 3), np.int64)}, "int64"),
        ({"input": np.array([[1, np.nan, 2]], np.float32)}, "NaN"),
        ({"input": np.array([[1, 2, np.inf]], np.float32)}, "Inf"),
        ({"input": np.array([[1, 2, -np.inf]], np.float32)}, "Inf"),
        ({"input": np.ones((0, 3), np.float32)}, "no rows"),
        ({}, "missing input"),
        ({"input": good(), "extra": good()}, "unknown input"),
    ],
    ids=[
        "columns",
        "rank-1",
        "rank-3",
        "fp64",
        "int64",
        "nan",
        "inf",
        "neg-inf",
        "empty",
        "missing",
        "extra",
    ],
)
def test_bad_inputs_are_invalid_argument(feeds, message):
    with pytest.raises(InvalidInput, match=message) as err:
        validate_feeds(SPECS, feeds)
    assert err.value.status is grpc.StatusCode.INVALID_ARGUMENT


def test_inputs_that_disagree_on_the_batch_size_are_refused():
    specs = [*SPECS, TensorSpec("mask", np.dtype(np.bool_), (None,))]
    with pytest.raises(InvalidInput, match="batch size"):
        validate_feeds(specs, {"input": good(2), "mask": np.ones(3, dtype=bool)})


def test_raw_bytes_decode_little_endian_and_must_fill_the_shape():
    values = np.arange(6, dtype="<f4")
    decoded = decode_tensor("input", "FP32", [2, 3], raw=values.tobytes(), values=())
    np.testing.assert_array_equal(decoded, values.reshape(2, 3))
    with pytest.raises(InvalidInput, match="bytes"):
        decode_tensor("input", "FP32", [2, 3], raw=values.tobytes()[:-4], values=())
    with pytest.raises(InvalidInput, match="values"):
        decode_tensor("input", "FP64", [2, 3], raw=None, values=[1.0] * 5)
    with pytest.raises(InvalidInput, match="datatype"):
        decode_tensor("input", "COMPLEX", [1], raw=None, values=[1.0])
    with pytest.raises(InvalidInput, match="negative"):
        decode_tensor("input", "FP32", [-1, 3], raw=None, values=[])


def test_kserve_inputs_decode_from_contents_or_raw_bytes():
    by_contents = pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input",
                datatype="FP64",
                shape=[1, 2],
                contents=pb.InferTensorContents(fp64_contents=[1.5, 2.5]),
            )
        ]
    )
    feeds = decode_inputs(by_contents)
    assert feeds["input"].dtype == np.float64
    assert feeds["input"].tolist() == [[1.5, 2.5]]
    by_raw = pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, 1])],
        raw_input_contents=[np.array([3, 4], "<f4").tobytes()],
    )
    feeds = decode_inputs(by_raw)
    assert feeds["input"].dtype == np.float32
    assert feeds["input"].tolist() == [[3.0], [4.0]]


def test_kserve_raw_contents_must_match_the_inputs_one_to_one():
    request = pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1])] * 2,
        raw_input_contents=[b"\x00\x00\x00\x00"],
    )
    with pytest.raises(InvalidArgument, match="raw_input_contents"):
        decode_inputs(request)
