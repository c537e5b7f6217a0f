"""Tiny ONNX models and fakes for tests and benchmarks (built with onnx.helper, no training).

* ``logistic_model``: a fraud-style classifier, ``input`` [N, F] -> ``label`` [N] (int64) and
  ``probabilities`` [N, 2], like skl2onnx exports with ``zipmap=False``;
* ``echo_model``: ``input`` [N, F] -> ``output`` = input and ``row_sum`` [N, 1]; every row comes
  back unchanged, so a test can see that each caller got exactly its own rows;
* ``scalar_model``: reduces the whole batch to one number, so it cannot be batched (warm-up fails).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _finish(graph: Any, opset: int = 17) -> bytes:
    from onnx import checker, helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="driftline-tests"
    )
    model.ir_version = 8
    checker.check_model(model)
    return bytes(model.SerializeToString())


def logistic_model(weights: Sequence[float], bias: float = 0.0, *, dtype: type = np.float32) -> bytes:
    """``probabilities[:, 1] = sigmoid(input @ weights + bias)``; ``label = p1 > 0.5``."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    n = len(weights)
    w = numpy_helper.from_array(np.asarray(weights, dtype=dtype).reshape(n, 1), "w")
    b = numpy_helper.from_array(np.asarray([bias], dtype=dtype), "b")
    one = numpy_helper.from_array(np.asarray([1.0], dtype=dtype), "one")
    half = numpy_helper.from_array(np.asarray([0.5], dtype=dtype), "half")
    axes = numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
        helper.make_node("Greater", ["p1", "half"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["label2d"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["label2d", "axes"], ["label"]),
    ]
    graph = helper.make_graph(
        nodes,
        "logistic",
        [helper.make_tensor_value_info("input", elem, ["N", n])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", elem, ["N", 2]),
        ],
        [w, b, one, half, axes],
    )
    return _finish(graph)


def echo_model(n_features: int, *, dtype: type = np.float32) -> bytes:
    """``output`` = ``input``, ``row_sum`` = the sum of each row ([N, 1])."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    axes = numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Identity", ["input"], ["output"]),
        helper.make_node("ReduceSum", ["input", "axes"], ["row_sum"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "echo",
        [helper.make_tensor_value_info("input", elem, ["N", n_features])],
        [
            helper.make_tensor_value_info("output", elem, ["N", n_features]),
            helper.make_tensor_value_info("row_sum", elem, ["N", 1]),
        ],
        [axes],
    )
    return _finish(graph)


def scalar_model(n_features: int) -> bytes:
    """Sums the whole batch into one scalar: valid ONNX, but not servable (fails warm-up)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0)],
        "scalar",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    return _finish(graph)


def mlp_model(n_features: int, hidden: int = 256, layers: int = 3, *, seed: int = 0) -> bytes:
    """A dense ReLU network with a sigmoid score: big enough for a GPU batch-size curve."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    width, current = n_features, "input"
    for i in range(layers):
        w = rng.normal(0, 1 / np.sqrt(width), (width, hidden)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"h{i}"]),
        ]
        width, current = hidden, f"h{i}"
    w = rng.normal(0, 1 / np.sqrt(width), (width, 1)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "wout"))
    nodes += [
        helper.make_node("MatMul", [current, "wout"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return _finish(graph)


# --- fakes for unit tests -----------------------------------------------------------------------


class FakeRuntime:
    """A model whose positive-class probability is its first input column (clipped to [0, 1]).

    ``gate`` (a threading.Event) holds every run until set; ``fail_warm_up`` makes warm-up raise.
    """

    provider = "FakeExecutionProvider"
    computes_on_caller = False

    def __init__(
        self, n_features: int = 3, *, gate: Any = None, fail_warm_up: bool = False, tag: float = 0.0
    ) -> None:
        from driftline.services.inference.tensors import TensorSpec

        self.inputs = [TensorSpec("input", np.dtype(np.float32), (None, n_features))]
        self.outputs = [
            TensorSpec("probabilities", np.dtype(np.float32), (None, 2)),
            TensorSpec("tag", np.dtype(np.float32), (None,)),
        ]
        self.gate = gate
        self.fail_warm_up = fail_warm_up
        self.tag = tag
        self.runs = 0

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.gate is not None:
            self.gate.wait(10)
        self.runs += 1
        p = np.clip(feeds["input"][:, 0], 0, 1).astype(np.float32)
        return [np.stack([1 - p, p], axis=1), np.full(p.shape, self.tag, np.float32)]

    def warm_up(self, batch_sizes: Sequence[int], runs: int) -> float:
        from driftline.services.inference.errors import ModelLoadError

        if self.fail_warm_up:
            raise ModelLoadError("warm-up failed", code="warm_up_failed")
        return 0.0


class FakeStore:
    """An online store in memory: ``put`` values, ``read_frame`` like ``AsyncOnlineStore.read_frame``."""

    def __init__(self, feature_names: Sequence[str]) -> None:
        self.names = tuple(feature_names)
        self.values: dict[str, tuple[Any, ...]] = {}
        self.reads: list[tuple[list[str], Any]] = []

    def put(
        self, entity_id: str, values: Sequence[float], *, age_s: float = 1.0, stale: Sequence[str] = ()
    ) -> None:
        from driftline.featurestore.vectors import FeatureStatus, FeatureValue

        now = time.time()
        self.values[entity_id] = tuple(
            FeatureValue(
                name,
                float(v),
                now - age_s,
                age_s,
                FeatureStatus.STALE if name in stale else FeatureStatus.OK,
            )
            for name, v in zip(self.names, values, strict=True)
        )

    async def read_frame(self, entity_ids: Sequence[str], *, now: Any = None, policy: Any = None) -> Any:
        from driftline.featurestore.vectors import EntityFeatures, FeatureFrame, FeatureStatus, FeatureValue

        self.reads.append((list(entity_ids), policy))
        missing = tuple(FeatureValue(n, 0.0, None, None, FeatureStatus.MISSING) for n in self.names)
        return FeatureFrame.from_entities(
            [EntityFeatures(e, "test", 1, self.values.get(e, missing)) for e in entity_ids]
        )


class ListSink:
    """A prediction sink that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def log_many(self, results: Sequence[Any]) -> None:
        self.records.extend(results)


class FakeSource:
    """A registry in memory: versions with artifact bytes, and aliases."""

    def __init__(self, name: str = "fraud") -> None:
        self.name = name
        self.artifacts: dict[int, bytes] = {}
        self.digests: dict[int, str] = {}
        self.features: dict[int, tuple[str, ...]] = {}
        self.params: dict[int, dict[str, str]] = {}
        self.aliases: dict[str, int] = {}
        self.fetches = 0

    def add(
        self,
        version: int,
        artifact: bytes,
        *,
        features: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
    ) -> None:
        import hashlib

        self.artifacts[version] = artifact
        self.digests[version] = hashlib.sha256(artifact).hexdigest()
        self.features[version] = tuple(features)
        self.params[version] = dict(params or {})

    def describe(self, name: str, version: int) -> Any:
        from driftline.kit.errors import NotFound
        from driftline.services.inference.loader import ModelRef

        if name != self.name or version not in self.artifacts:
            raise NotFound(f"{name} v{version}")
        return ModelRef(name, version, self.digests[version], self.features[version], self.params[version])

    def resolve(self, name: str, alias: str) -> Any:
        version = self.aliases.get(alias)
        return None if version is None or name != self.name else self.describe(name, version)

    def artifact(self, name: str, version: int) -> bytes:
        self.fetches += 1
        return self.artifacts[version]
