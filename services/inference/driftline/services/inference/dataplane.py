"""Inference's compiled data plane, a spike (docs/adr/0011-inference-serving-stays-in-cpython.md):
the Python side, which writes its spec and runs its process.

``services/inference/dataplane`` (Rust: tonic, ONNX Runtime's C API through ``ort``, a pipelined
Redis read, librdkafka) serves ``driftline.inference.v1`` Predict and PredictBatch from one
model, with the online store's layout and staleness policy, the Python service's error codes,
and a ``PredictionLog`` record per prediction. Everything it needs to know comes from here, out
of the platform's own definitions, so no contract has a second source:

* the feature set's key prefix, names, ttls and defaults (``driftline.featurestore``);
* the model's input, dtype, score output and columns, found by the same functions the Python
  service uses on the same ONNX Runtime session (``models.feature_input``, ``score_output``);
* the log's librdkafka properties (``kit.kafka.producer_config``) and topic (``kit.topics``);
* the service's settings (policy, threshold, limits, Redis URL).

What the spike leaves to the Python service (and why it is not the serving path): the KServe v2
API, dynamic batching, hot swap, shadow and canary routing, health, metrics, CUDA. See
``docs/inference.md``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import onnxruntime

from driftline.featurestore import FeatureSet
from driftline.featurestore.online import DEFAULT_KEY_PREFIX, key_prefix_of
from driftline.kit.errors import FailedPrecondition
from driftline.kit.kafka import producer_config
from driftline.kit.topics import Topic
from driftline.services.inference.config import Settings
from driftline.services.inference.errors import ModelLoadError
from driftline.services.inference.models import ModelMeta, feature_input, score_output
from driftline.services.inference.runtime import Device, RuntimeOptions, SessionFactory

#: Overrides where the binary is looked for (default: the crate's release build).
BINARY_ENV = "DRIFTLINE_DATAPLANE_BINARY"
_CRATE = Path(__file__).resolve().parents[3] / "dataplane"


def binary_path() -> Path:
    """The data plane's executable (``make setup`` builds it)."""
    return Path(os.environ.get(BINARY_ENV) or _CRATE / "target" / "release" / "driftline-dataplane")


def ort_library() -> Path:
    """ONNX Runtime's shared library from the installed Python package: the data plane runs the
    very runtime the Python service does."""
    capi = Path(onnxruntime.__file__).parent / "capi"
    found = sorted(capi.glob("libonnxruntime.so*"))
    if not found:
        raise FileNotFoundError(f"no libonnxruntime.so in {capi}")
    return found[-1]


def build_spec(
    settings: Settings,
    *,
    feature_set: FeatureSet,
    model_path: Path,
    meta: ModelMeta,
    predictions: Topic,
    port_file: Path,
    listen: str = "127.0.0.1:0",
    workers: int = 2,
    store_timeout_s: float = 1.0,
) -> dict[str, Any]:
    """The data plane's spec for serving ``model_path`` (version ``meta``) on ``feature_set``."""
    runtime = SessionFactory(RuntimeOptions(device=Device.CPU)).load(model_path.read_bytes())
    matrix = feature_input(runtime.inputs, meta.feature_names)
    scored = score_output(runtime.outputs)
    if matrix is None or scored is None:
        raise ModelLoadError(
            f"model {meta.name} v{meta.version} does not take one feature matrix and give a float score",
            code="signature_mismatch",
        )
    names = list(feature_set.feature_names)
    wanted = list(meta.feature_names or names)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise FailedPrecondition(
            f"model {meta.name} v{meta.version} needs features {missing} the store lacks"
        )
    key_prefix = settings.online_store_key_prefix or DEFAULT_KEY_PREFIX
    return {
        "listen": listen,
        "port_file": str(port_file),
        "workers": workers,
        "max_entities": settings.max_entities_per_call,
        "max_message_bytes": settings.grpc.max_message_bytes,
        "ort_library": str(ort_library()),
        "store": {
            "url": settings.redis.url,
            "key_prefix": key_prefix_of(feature_set, key_prefix),
            "feature_set": feature_set.key,
            "names": names,
            "ttls_s": [f.ttl_s for f in feature_set.features],
            "defaults": list(feature_set.defaults),
            "policy": settings.staleness_policy.value,
            "timeout_s": store_timeout_s,
        },
        "model": {
            "path": str(model_path),
            "name": meta.name,
            "version": meta.version,
            "input": matrix.name,
            "input_dtype": matrix.dtype.name,
            "score_output": runtime.outputs[scored].name,
            "feature_names": wanted,
            "columns": [names.index(n) for n in wanted],
            "threshold": meta.threshold if meta.threshold is not None else settings.decision_threshold,
            "intra_threads": settings.intra_op_threads,
        },
        "log": {
            "topic": predictions.name,
            "config": {key: _text(value) for key, value in producer_config(settings.kafka).items()},
        },
    }


def _text(value: object) -> str:
    """A librdkafka property's value as text (``true``/``false`` for booleans)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class DataPlane:
    """One data-plane process: ``start`` writes the spec, runs the binary and waits until its
    model is warm and its port bound; ``stop`` sends SIGTERM (it drains calls and flushes the
    log) and waits. Its JSON log lines go to ``workdir/dataplane.log``."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        self._spec = spec
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the data plane is not running")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self._workdir / "dataplane.log"

    def start(self, timeout_s: float = 30.0) -> int:
        binary = binary_path()
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is not built: run make setup")
        self._workdir.mkdir(parents=True, exist_ok=True)
        port_file = Path(self._spec["port_file"])
        port_file.unlink(missing_ok=True)
        spec_path = self._workdir / "dataplane.json"
        spec_path.write_text(json.dumps(self._spec, indent=2))
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([str(binary), "serve", str(spec_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if self._process.poll() is not None:
                raise RuntimeError(f"the data plane exited with {self._process.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the data plane was not ready within {timeout_s} s: {self._tail()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self.port

    def _tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status (None: never started)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode
