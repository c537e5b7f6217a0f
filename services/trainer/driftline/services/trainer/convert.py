"""ONNX conversion with a signature the inference service can use without knowing LightGBM.

The graph has one input, ``features`` (float32, [N, n_features], columns in feature-name order),
and two outputs: ``probability`` (float32, [N], the probability of class 1) and ``label``
(int64, [N]). ZipMap is disabled, so no output is a sequence of maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxmltools.convert.common.data_types import FloatTensorType

from driftline.kit.errors import InvalidArgument
from driftline.services.trainer.errors import ParityError

INPUT_NAME = "features"
OUTPUT_PROBABILITY = "probability"
OUTPUT_LABEL = "label"
#: Opset of the default domain; ai.onnx.ml stays at the converter's (v1, TreeEnsembleClassifier).
TARGET_OPSET = 15


@dataclass(frozen=True)
class TensorSpecDef:
    """One tensor of the signature, in KServe v2 datatype terms (-1 is a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def signature(n_features: int) -> tuple[list[TensorSpecDef], list[TensorSpecDef]]:
    """Inputs and outputs of every model this trainer produces."""
    return (
        [TensorSpecDef(INPUT_NAME, "FP32", (-1, n_features))],
        [TensorSpecDef(OUTPUT_PROBABILITY, "FP32", (-1,)), TensorSpecDef(OUTPUT_LABEL, "INT64", (-1,))],
    )


def to_onnx(model: lgb.Booster, n_features: int) -> bytes:
    """Serialise a fitted binary classifier to ONNX with the simple signature above."""
    converted = onnxmltools.convert_lightgbm(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=TARGET_OPSET,
    )
    graph = converted.graph
    by_name = {o.name: o for o in graph.output}
    label_out, probabilities_out = graph.output[0].name, graph.output[1].name
    if set(by_name) != {label_out, probabilities_out} or len(graph.output) != 2:
        raise RuntimeError(f"unexpected converter outputs {list(by_name)}")
    graph.initializer.append(helper.make_tensor("class_one_index", TensorProto.INT64, [], [1]))
    graph.node.append(
        helper.make_node(
            "Gather", [probabilities_out, "class_one_index"], [OUTPUT_PROBABILITY], axis=1, name="class_one"
        )
    )
    graph.node.append(helper.make_node("Identity", [label_out], [OUTPUT_LABEL + "_out"], name="label_out"))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(OUTPUT_PROBABILITY, TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info(OUTPUT_LABEL + "_out", TensorProto.INT64, [None]),
        ]
    )
    # The converter names its label output "label"; route it through an Identity so the graph
    # output can carry the public name without clashing with the internal tensor.
    _rename_output(graph, OUTPUT_LABEL + "_out", OUTPUT_LABEL, internal=label_out)
    converted.producer_name = "driftline-trainer"
    # The converter names the graph with a random uuid; a fixed name keeps the bytes (and so the
    # artifact digest) identical for identical models.
    graph.name = "driftline_lightgbm_binary"
    onnx.checker.check_model(converted)
    return bytes(converted.SerializeToString())


def _rename_output(graph: onnx.GraphProto, current: str, public: str, *, internal: str) -> None:
    if internal == public:
        # Free the public name: rename the converter's internal tensor everywhere it appears.
        hidden = f"{internal}_raw"
        for node in graph.node:
            node.output[:] = [hidden if o == internal else o for o in node.output]
            node.input[:] = [hidden if i == internal else i for i in node.input]
    for node in graph.node:
        node.output[:] = [public if o == current else o for o in node.output]
    for out in graph.output:
        if out.name == current:
            out.name = public


class OnnxScorer:
    """Scores feature rows with an ONNX model on the CPU (the trainer never needs a GPU)."""

    def __init__(self, artifact: bytes) -> None:
        try:
            self._session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise InvalidArgument(f"not a loadable ONNX model: {err}") from err
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InvalidArgument(f"model has {len(inputs)} inputs; expected one feature matrix")
        self._input = inputs[0].name
        outputs = {o.name: o for o in self._session.get_outputs()}
        if OUTPUT_PROBABILITY in outputs:
            self._output, self._column = OUTPUT_PROBABILITY, None
        elif "probabilities" in outputs:
            self._output, self._column = "probabilities", 1
        else:
            raise InvalidArgument(f"model has no probability output (outputs: {sorted(outputs)})")

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability of class 1 for each row, as float64."""
        batch = np.ascontiguousarray(features, dtype=np.float32)
        (scores,) = self._session.run([self._output], {self._input: batch})
        scores = np.asarray(scores)
        if self._column is not None:
            scores = scores[:, self._column]
        return scores.astype(np.float64).reshape(-1)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference between two score vectors of the same length."""
    if a.shape != b.shape:
        raise ValueError(f"score shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_parity(native: np.ndarray, converted: np.ndarray, tolerance: float) -> float:
    """Return the max abs difference; raise ParityError when it exceeds the tolerance."""
    diff = max_abs_diff(native, converted)
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(f"ONNX scores differ from the native model by {diff:.3g} > {tolerance:.3g}")
    return diff


def feature_matrix(frame_columns: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Column positions of ``wanted`` in ``frame_columns``; raises when one is missing."""
    index = {name: i for i, name in enumerate(frame_columns)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise InvalidArgument(f"features missing from the training set: {missing}")
    return [index[name] for name in wanted]
