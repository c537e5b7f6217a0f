"""Tiny ONNX models and hostile uploads for tests (built in memory, nothing downloaded), and the
registry app run on a thread of its own for other services' integration tests."""

from __future__ import annotations

import asyncio
import io
import pickle
import sqlite3
import threading
import zipfile
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from driftline.registry.v1 import registry_pb2 as pb

FEATURES = ("amount", "hour", "merchant_risk")

T = TypeVar("T")


def settings_for_tests(data_dir: Path, kafka: Any, token: str, **overrides: Any) -> Any:
    """Registry settings for a test: 127.0.0.1 on a free port, data under ``data_dir``, no
    /metrics, a quick outbox and drain; ``overrides`` win (``kafka``: a KafkaSettings)."""
    from driftline.kit.settings import MetricsSettings
    from driftline.services.registry.config import Settings

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "token": token,
        "data_dir": data_dir,
        "kafka": kafka,
        "metrics": MetricsSettings(enabled=False),
        "outbox_poll_interval_s": 0.2,
        "drain_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


class RegistryThread:
    """The asyncio registry app on an event loop thread of its own, for synchronous tests."""

    def __init__(self, settings: Any) -> None:  # driftline.services.registry.config.Settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.app = self._run(self._make(settings))
        self.port: int = self._run(self.app.start())

    async def _make(self, settings: Any) -> Any:
        from driftline.services.registry.app import RegistryApp  # the app is heavier than the rest

        return RegistryApp(settings)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    def stop(self) -> None:
        self._run(self.app.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def tiny_model(weights: tuple[float, ...] = (0.5, -0.25, 1.0), bias: float = 0.1) -> bytes:
    """score = sigmoid(features @ w + b): input "features" FP32 [-1, 3], output "score" FP32 [-1, 1]."""
    n = len(weights)
    w = numpy_helper.from_array(np.array(weights, dtype=np.float32).reshape(n, 1), "w")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit0"]),
            helper.make_node("Add", ["logit0", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.producer_name = "driftline-tests"
    return model.SerializeToString()


def large_model(floats: int) -> bytes:
    """A valid model with a weight tensor of ``floats`` values (to exceed a size limit)."""
    w = numpy_helper.from_array(np.zeros((floats,), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [floats])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [floats])],
        [w],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    ).SerializeToString()


def custom_op_model(domain: str = "com.example.evil") -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Exfiltrate", ["features"], ["score"], domain=domain)],
        "custom",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)],
        ir_version=8,
    )
    return model.SerializeToString()


def external_data_model(location: str = "../../../../etc/passwd") -> bytes:
    """A model whose weight lives "in another file": loaders would read ``location``."""
    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([3, 1])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = w.external_data.add()
        entry.key = key
        entry.value = value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["score"])],
        "external",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [w],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    ).SerializeToString()


class _Payload:
    """Pickling this would run code on load; the registry must refuse it unread."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def pickle_bytes(protocol: int = 4) -> bytes:
    return pickle.dumps(_Payload(), protocol=protocol)


def torch_zip_bytes() -> bytes:
    """The layout of a torch.save() file: a zip archive with archive/data.pkl inside."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes(2))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def joblib_bytes() -> bytes:
    """A compressed joblib dump (zlib-wrapped pickle)."""
    import joblib

    buffer = io.BytesIO()
    joblib.dump({"coef": [1.0, 2.0]}, buffer, compress=3)
    return buffer.getvalue()


def corrupt_bytes() -> bytes:
    """A valid model cut in half."""
    data = tiny_model()
    return data[: len(data) // 2]


def register_request(name: str = "fraud", **overrides: object) -> pb.RegisterModelVersionRequest:
    """A complete registration request for ``tiny_model`` with lineage and a reference sample."""
    request = pb.RegisterModelVersionRequest(
        name=name,
        artifact=tiny_model(),
        signature=pb.Signature(feature_names=FEATURES),
        feature_set="card_features",
        feature_set_version=1,
        metrics={"auc": 0.91},
        params={"learning_rate": "0.1"},
        lineage=pb.Lineage(data_hash="ab" * 32, code_revision="deadbeef", trigger="initial"),
        reference=pb.ReferenceSample(
            feature_names=FEATURES, rows=2, values=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], scores=[0.2, 0.8]
        ),
        tags={"team": "risk"},
        reason="first model",
    )
    for key, value in overrides.items():
        field = getattr(request, key)
        if hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


@contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Another writer holding a SQLite file's write lock (``BEGIN IMMEDIATE``) until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()
