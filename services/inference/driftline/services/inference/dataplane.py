"""Inference's compiled data plane (docs/adr/0011-inference-serving-stays-in-cpython.md): the
Python side, which writes its spec, runs its process and loads models into it.

``services/inference/dataplane`` (Rust: tonic, ONNX Runtime's C API through ``ort``, a pipelined
Redis read, librdkafka) serves ``driftline.inference.v1`` Predict and PredictBatch and the KServe
v2 API, with the online store's layout and staleness policy, dynamic batching, shadow and canary
routing, CUDA when asked for, the Python service's error codes, a ``PredictionLog`` record per
prediction, ``grpc.health.v1`` and Prometheus metrics. Models reach it over a Unix socket
(``driftline.dataplane.v1.DataPlaneControl``): it verifies the artifact's digest, loads and warms
it, and swaps it into its role while calls in flight finish on the old one. Everything it needs
to know comes from here, out of the platform's own definitions, so no contract has a second
source:

* the feature set's key prefix, names, ttls and defaults (``driftline.featurestore``);
* the model's input, dtype, score output and columns, found by the same functions the Python
  service uses on the same ONNX Runtime session (``models.feature_input``, ``score_output``);
* the log's librdkafka properties (``kit.kafka.producer_config``) and topic (``kit.topics``);
* the service's settings (policy, threshold, limits, batching, routing, device, Redis URL).

See ``docs/inference.md`` for where it runs (``settings.data_plane``) and what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime
import structlog

from driftline.dataplane.v1 import control_pb2, control_pb2_grpc
from driftline.featurestore import FeatureSet
from driftline.featurestore.online import key_prefix_of
from driftline.kit.errors import FailedPrecondition
from driftline.kit.kafka import producer_config
from driftline.kit.settings import RedisSettings, given_paths
from driftline.kit.tls import CertificateFiles
from driftline.kit.topics import Topic
from driftline.services.inference import metrics
from driftline.services.inference.batcher import BatchingOptions
from driftline.services.inference.config import Settings
from driftline.services.inference.errors import DigestMismatch, ModelLoadError
from driftline.services.inference.models import ModelMeta, Role, Runtime, feature_input, score_output
from driftline.services.inference.runtime import CUDA, Device, RuntimeOptions, SessionFactory

log = structlog.get_logger(__name__)

_WIRE_ROLES = {Role.CHAMPION: control_pb2.ROLE_CHAMPION, Role.CHALLENGER: control_pb2.ROLE_CHALLENGER}

#: Overrides where the binary is looked for (default: the crate's release build).
BINARY_ENV = "DRIFTLINE_DATAPLANE_BINARY"
_CRATE = Path(__file__).resolve().parents[3] / "dataplane"


def binary_path() -> Path:
    """The data plane's executable (``make dataplane`` builds it)."""
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
    predictions: Topic,
    port_file: Path,
    control_socket: Path,
    listen: str = "127.0.0.1:0",
    metrics_listen: str = "127.0.0.1:0",
    workers: int = 2,
) -> dict[str, Any]:
    """The data plane's spec: how it runs on ``feature_set``, before any model is loaded."""
    return {
        "listen": listen,
        "metrics_listen": metrics_listen,
        "control_socket": str(control_socket),
        "port_file": str(port_file),
        "workers": workers,
        "parent_pid": os.getpid(),
        "model_name": settings.model_name,
        "max_entities": settings.max_entities_per_call,
        "max_message_bytes": settings.grpc.max_message_bytes,
        "default_deadline_s": settings.grpc.default_deadline_s,
        "routing": {"shadow": settings.shadow, "canary_share": settings.canary_share},
        "batching": {
            "max_batch_size": settings.max_batch_size,
            "max_queue_delay_us": settings.max_queue_delay_us,
            "queue_capacity": settings.queue_capacity,
            "inline_below_us": BatchingOptions().inline_below_us,
        },
        "ort_library": str(ort_library()),
        "store": {
            "url": settings.redis.url,
            "key_prefix": key_prefix_of(feature_set, settings.online_store_key_prefix),
            "feature_set": feature_set.key,
            "names": list(feature_set.feature_names),
            "ttls_s": [f.ttl_s for f in feature_set.features],
            "defaults": list(feature_set.defaults),
            "policy": settings.staleness_policy.value,
            "timeout_s": settings.redis.socket_timeout_s,
            "tls": _store_tls(settings.redis),
        },
        "log": {
            "topic": predictions.name,
            "config": {
                key: _text(value)
                for key, value in {
                    **producer_config(settings.kafka),
                    # As the Python path's prediction log: the same bound and the same linger.
                    "queue.buffering.max.messages": settings.prediction_log_capacity,
                    "linger.ms": settings.prediction_log_linger_ms,
                }.items()
            },
        },
        "tls": settings.grpc.tls_files(),
        "metrics_tls": settings.metrics.tls_files(),
    }


def _store_tls(redis: RedisSettings) -> dict[str, str] | None:
    """The TLS files of a ``rediss://`` online store, as the data plane's spec names them."""
    if not redis.uses_tls:
        return None
    return given_paths(
        {"ca_file": redis.tls_ca_file, "cert_file": redis.tls_cert_file, "key_file": redis.tls_key_file}
    )


def _text(value: object) -> str:
    """A librdkafka property's value as text (``true``/``false`` for booleans)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def model_spec(
    settings: Settings,
    *,
    feature_set: FeatureSet,
    artifact: bytes,
    meta: ModelMeta,
    path: Path,
    runtime: Runtime | None = None,
) -> control_pb2.ModelSpec:
    """What the data plane needs to serve ``artifact`` (version ``meta``, written at ``path``),
    found on an ONNX Runtime session by the Python service's own functions: ``runtime`` when the
    caller has one loaded already, else one loaded here. The digest is the registry's
    (``meta.sha256``) when known, which the data plane checks the file against."""
    if runtime is None:
        runtime = SessionFactory(RuntimeOptions(device=Device.CPU)).load(artifact)
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
    return control_pb2.ModelSpec(
        path=str(path),
        sha256=meta.sha256 or hashlib.sha256(artifact).hexdigest(),
        name=meta.name,
        version=meta.version,
        input=matrix.name,
        input_dtype=matrix.dtype.name,
        score_output=runtime.outputs[scored].name,
        feature_names=wanted,
        columns=[names.index(n) for n in wanted],
        threshold=meta.threshold if meta.threshold is not None else settings.decision_threshold,
        intra_threads=settings.intra_op_threads,
        # Where the service's own session of it runs: its device choice (a CUDA session that
        # really works, else the CPU) is made once, there.
        device=Device.CUDA.value if runtime.provider == CUDA else Device.CPU.value,
    )


class DataPlane:
    """One data-plane process.

    ``start`` writes the spec, runs the binary and waits until it listens (health NOT_SERVING).
    ``load_model`` writes an artifact under ``workdir/models`` and has the process verify, load,
    warm and swap it in. ``stop`` sends SIGTERM (it drains calls and flushes the log) and waits.
    Its JSON log lines go to ``workdir/dataplane.log``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        feature_set: FeatureSet,
        predictions: Topic,
        workdir: Path,
        listen: str = "127.0.0.1:0",
        metrics_listen: str = "127.0.0.1:0",
        log_file: bool = True,
    ) -> None:
        """``log_file``: its JSON lines go to ``workdir/dataplane.log``; False: to this process's
        stdout and stderr, beside the service's own lines."""
        self._settings = settings
        self._feature_set = feature_set
        self._workdir = workdir
        self._log_file = log_file
        # A Unix socket's path is limited to 107 bytes: a short one, in a directory of its own
        # (0700: no other user can reach the socket, even before the process narrows its mode).
        self._socket_dir = Path(tempfile.mkdtemp(prefix="driftline-dp-"))
        self.control_socket = self._socket_dir / "control.sock"
        self.spec = build_spec(
            settings,
            feature_set=feature_set,
            predictions=predictions,
            port_file=workdir / "ports.json",
            control_socket=self.control_socket,
            listen=listen,
            metrics_listen=metrics_listen,
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._channel: grpc.Channel | None = None
        # Starts, restarts and stops one at a time: a stop while a restart is starting the
        # process waits for it, then stops the new process rather than leave it running.
        self._lifecycle = threading.RLock()
        self.port = 0
        self.metrics_port = 0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the data plane is not running")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self._workdir / "dataplane.log"

    def start(self, timeout_s: float = 30.0) -> int:
        """Runs the process; returns its public port once it listens."""
        with self._lifecycle:
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> int:
        binary = binary_path()
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is not built: run make dataplane")
        self._workdir.mkdir(parents=True, exist_ok=True)
        port_file = Path(self.spec["port_file"])
        port_file.unlink(missing_ok=True)
        spec_path = self._workdir / "dataplane.json"
        # 0600: the spec holds the Redis URL, password included.
        descriptor = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as spec_file:
            json.dump(self.spec, spec_file, indent=2)
        # The process reloads renewed certificate files itself; the gauge follows the files.
        if self._settings.grpc.tls:
            CertificateFiles(self._settings.grpc, port="grpc").export_expiry()
        args = [str(binary), "serve", str(spec_path)]
        if self._log_file:
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(args, stdout=log, stderr=log)
        else:
            self._process = subprocess.Popen(args)
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if self._process.poll() is not None:
                raise RuntimeError(f"the data plane exited with {self._process.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                self._stop(5.0)  # this process only: a restart may try again
                raise TimeoutError(f"the data plane did not listen within {timeout_s} s: {self._tail()}")
            time.sleep(0.02)
        ports = json.loads(port_file.read_text())
        self.port, self.metrics_port = int(ports["port"]), int(ports["metrics_port"])
        # grpc-core would send the socket's path as :authority, which HTTP/2 servers refuse.
        options = [("grpc.default_authority", "localhost")]
        self._channel = grpc.insecure_channel(f"unix:{self.control_socket}", options=options)
        return self.port

    def load_model(
        self,
        artifact: bytes,
        meta: ModelMeta,
        runtime: Runtime | None = None,
        *,
        role: Role = Role.CHAMPION,
        timeout_s: float = 60.0,
    ) -> control_pb2.LoadModelResponse:
        """Serve ``artifact`` (version ``meta``; ``runtime``: the service's own session of it, if
        loaded) in ``role`` from now on. Raises ``ModelLoadError`` or ``DigestMismatch`` when the
        data plane refuses it (the model in the role keeps serving), and ``grpc.RpcError`` when
        it cannot be reached."""
        stub = self.control()
        # Named by digest only: nothing from the registry's names reaches a path.
        path = self._workdir / "models" / f"{hashlib.sha256(artifact).hexdigest()}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(artifact)
        partial.replace(path)
        try:
            spec = model_spec(
                self._settings,
                feature_set=self._feature_set,
                artifact=artifact,
                meta=meta,
                path=path,
                runtime=runtime,
            )
            request = control_pb2.LoadModelRequest(model=spec, role=_WIRE_ROLES[role])
            return stub.LoadModel(request, timeout=timeout_s)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.DATA_LOSS:
                raise DigestMismatch(details) from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise ModelLoadError(details) from None
            raise
        finally:
            path.unlink(missing_ok=True)  # once loaded, the data plane holds the model in memory

    def remove_model(self, role: Role, timeout_s: float = 10.0) -> int:
        """Take ``role``'s model out of service; the version removed (0: none was loaded)."""
        request = control_pb2.RemoveModelRequest(role=_WIRE_ROLES[role])
        return self.control().RemoveModel(request, timeout=timeout_s).removed_version

    def control(self) -> control_pb2_grpc.DataPlaneControlStub:
        """The control service's stub, on the Unix socket."""
        if self._channel is None:
            raise RuntimeError("the data plane is not running")
        return control_pb2_grpc.DataPlaneControlStub(self._channel)

    def _tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def exit_code(self) -> int | None:
        """The process's exit status once it has exited on its own; None while it runs (or
        before it started)."""
        return None if self._process is None else self._process.poll()

    def restart(self, timeout_s: float = 30.0) -> int:
        """Start it again after it exited, on the same addresses; it holds no model until loaded."""
        with self._lifecycle:
            return self._restart(timeout_s)

    def _restart(self, timeout_s: float) -> int:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._stopped:
            raise RuntimeError("the data plane was stopped")
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError("the data plane is still running")
        self._process = None
        self._socket_dir.mkdir(mode=0o700, exist_ok=True)
        return self.start(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status (None: never started).
        A stopped data plane is not restarted."""
        self._stopped = True  # before the lock: a restart waiting for it then gives up
        with self._lifecycle:
            return self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> int | None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        process, self._process = self._process, None
        shutil.rmtree(self._socket_dir, ignore_errors=True)
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


class Signature:
    """What the control plane keeps of a model the data plane serves: the provider it chose and
    its inputs' and outputs' specs (all ``model_spec`` needs to hand it to a restarted data
    plane), without its ONNX Runtime session, whose memory (on CUDA, the device's) is freed. The
    data plane runs every prediction; a run here is a bug, refused loudly."""

    #: A signature never runs, on any thread.
    computes_on_caller = False

    def __init__(self, runtime: Runtime) -> None:
        self.provider = runtime.provider
        self.inputs = list(runtime.inputs)
        self.outputs = list(runtime.outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("the data plane serves this model: this process holds its signature only")

    def warm_up(self, batch_sizes: Sequence[int], runs: int) -> float:
        return 0.0  # nothing here to warm: the data plane warmed its own session


class DataPlaneMirror:
    """The loader's ``Mirror`` for the data plane this service controls: each model goes to it
    before it is swapped in here, so the process that serves always has it first. A refusal (a
    model it cannot serve, a digest mismatch) or no answer fails the load: the model in the role
    keeps serving. No answer is also counted (``driftline_inference_data_plane_unreachable_total``).
    Once it serves a model, this process keeps only its ``Signature``. The models it last took,
    by role, are kept to hand to a restarted data plane (``replay``).
    """

    def __init__(self, data_plane: DataPlane) -> None:
        self._data_plane = data_plane
        self._live: dict[Role, tuple[bytes, ModelMeta, Signature]] = {}
        # Loads, removals and replays one at a time, so a replay never undoes a newer load.
        self._lock = threading.Lock()

    def load(self, artifact: bytes, meta: ModelMeta, runtime: Runtime, role: Role) -> Signature:
        with self._lock:
            try:
                self._data_plane.load_model(artifact, meta, runtime, role=role)  # spec from this session
            except (ModelLoadError, DigestMismatch):
                raise
            except Exception as err:
                self._unreachable(err, model=meta.name, version=meta.version, role=role.value)
                raise
            signature = Signature(runtime)
            self._live[role] = (artifact, meta, signature)
            return signature

    def remove(self, role: Role) -> None:
        """Best effort: a data plane that does not answer keeps its challenger until it restarts."""
        with self._lock:
            self._live.pop(role, None)
            try:
                self._data_plane.remove_model(role)
            except Exception as err:  # noqa: BLE001 - counted and logged; the alias event is done
                self._unreachable(err, role=role.value)

    def replay(self) -> list[int]:
        """Load every live model again, the champion first (a restarted data plane holds none);
        the versions loaded."""
        with self._lock:
            order = sorted(self._live.items(), key=lambda item: item[0] is not Role.CHAMPION)
            for role, (artifact, meta, runtime) in order:
                self._data_plane.load_model(artifact, meta, runtime, role=role)
            return [meta.version for _, (_, meta, _) in order]

    @staticmethod
    def _unreachable(err: Exception, **context: object) -> None:
        metrics.DATA_PLANE_UNREACHABLE.inc()
        log.error("data_plane_unreachable", error=str(err), **context)
