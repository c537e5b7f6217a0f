"""ONNX Runtime sessions: execution-provider choice, options tuned for small models, I/O binding
on CUDA, and warm-up.

``onnxruntime.get_available_providers()`` lists CUDA whenever the onnxruntime-gpu wheel is
installed, even on a machine whose CUDA libraries are missing or which has no GPU: the provider
only fails when a session is created, and ONNX Runtime then silently falls back to the CPU. So the
provider is chosen by creating the session and reading ``session.get_providers()``. That try
is only made where an NVIDIA driver is installed (``libcuda.so.1`` loads): elsewhere it would
only print ONNX Runtime's own error about missing CUDA libraries, in colour, on every start of
a CPU-only machine.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import onnxruntime as ort
import structlog

from driftline.services.inference.errors import ModelLoadError
from driftline.services.inference.tensors import ORT_TO_NUMPY, TensorSpec

log = structlog.get_logger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Device(StrEnum):
    """Where models run. ``auto`` uses CUDA when a session can really be created on it."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created and warmed."""

    device: Device = Device.AUTO
    cuda_device_id: int = 0
    #: Threads one session run may use. Small tabular models gain nothing from more, and the
    #: batcher already overlaps runs; 1 runs the model on the calling thread (no pool hand-off).
    intra_op_threads: int = 1
    #: Batch sizes the warm-up runs (each ``warmup_runs`` times) before a model serves traffic.
    warmup_batch_sizes: tuple[int, ...] = (1, 64)
    warmup_runs: int = 3


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = ORT_TO_NUMPY.get(arg.type)
    if dtype is None:
        # skl2onnx's ZipMap (a sequence of maps) and string tensors cannot go on the wire.
        raise ModelLoadError(
            f"{arg.name} has type {arg.type}; only numeric tensors are served (export with zipmap=False)",
            code="unsupported_type",
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or []))
    return TensorSpec(arg.name, dtype, shape)


class OnnxModel:
    """One ONNX Runtime session and the specs of its inputs and outputs.

    ``run`` is thread-safe (ONNX Runtime allows concurrent ``Run`` calls on one session) and
    releases the GIL while the model computes.
    """

    def __init__(
        self, session: ort.InferenceSession, *, device_id: int = 0, intra_op_threads: int = 1
    ) -> None:
        self._session = session
        self._device_id = device_id
        self.provider: str = session.get_providers()[0]
        #: Whether a run computes on the calling thread alone (CPU, one intra-op thread): that
        #: thread's CPU clock then times the run itself, whatever the GIL or the machine do.
        self.computes_on_caller = self.provider == CPU and intra_op_threads == 1
        self.inputs: list[TensorSpec] = [_spec(a) for a in session.get_inputs()]
        self.outputs: list[TensorSpec] = [_spec(a) for a in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.use_io_binding = self.provider == CUDA
        # One binding per thread, reused: a binding is not thread-safe, and building one per
        # call costs more than a small model's run.
        self._bindings = threading.local()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; outputs come back in the order of ``self.outputs``."""
        if self.use_io_binding:
            return self._run_bound(feeds)
        return list(self._session.run(self._output_names, dict(feeds)))

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # I/O binding: each input is copied to the device once, straight from the numpy buffer,
        # and each output is copied once into host memory that ONNX Runtime allocates for it,
        # with no per-call staging by session.run.
        binding = getattr(self._bindings, "binding", None)
        if binding is None:
            binding = self._bindings.binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        try:
            self._session.run_with_iobinding(binding)
            return [value.numpy() for value in binding.get_outputs()]
        finally:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()

    def warm_up(self, batch_sizes: Sequence[int], runs: int) -> float:
        """Run zero inputs through every batch size; return the seconds it took.

        Also proves the model is batchable: every output's first dimension must follow the input's.
        """
        started = time.perf_counter()
        for batch in batch_sizes:
            feeds = {spec.name: spec.example(batch) for spec in self.inputs}
            for _ in range(runs):
                outputs = self.run(feeds)
            for spec, output in zip(self.outputs, outputs, strict=True):
                if output.ndim == 0 or output.shape[0] != batch:
                    raise ModelLoadError(
                        f"output {spec.name} has shape {output.shape} for a batch of {batch}",
                        code="not_batchable",
                    )
        return time.perf_counter() - started


def nvidia_driver() -> str | None:
    """Why CUDA cannot work here: None when the NVIDIA driver's library loads, else the reason."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"no NVIDIA driver (libcuda.so.1: {err})"
    return None


class SessionFactory:
    """Creates sessions with the configured options and remembers whether CUDA works here."""

    def __init__(
        self, options: RuntimeOptions | None = None, *, driver_check: Callable[[], str | None] = nvidia_driver
    ) -> None:
        self.options = options or RuntimeOptions()
        self._cuda_works: bool | None = None if self.options.device is not Device.CPU else False
        self._driver_check = driver_check
        # ONNX Runtime's process-wide logger prints plain text to stderr, outside the JSON logs;
        # its warnings (ORT 1.31 on a GPU: "No registered plugin EP device found for
        # 'CUDAExecutionProvider'") carry nothing to act on. Errors still show.
        ort.set_default_logger_severity(3)

    def _session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle spinning burns the cores the event loop and the other requests need.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        return so

    def _create(
        self, model_bytes: bytes, providers: list[str | tuple[str, dict[str, str]]]
    ) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                model_bytes, sess_options=self._session_options(), providers=providers
            )
        except Exception as err:
            raise ModelLoadError(f"onnxruntime cannot load the model: {err}", code="invalid_model") from err

    def load(self, model_bytes: bytes) -> OnnxModel:
        """A session on CUDA when usable (or required), else on the CPU."""
        device_id = self.options.cuda_device_id
        if self._cuda_works is None and CUDA in ort.get_available_providers():
            missing = self._driver_check()
            if missing is not None:
                self._cuda_works = False
                log.info("cuda_unavailable", reason=missing, fallback=CPU)
        if self._cuda_works is not False and CUDA in ort.get_available_providers():
            cuda_options = {
                "device_id": str(device_id),
                "cudnn_conv_algo_search": "HEURISTIC",
                # TF32 matmuls move scores by ~1e-4: GPU and CPU must give the same answers.
                "use_tf32": "0",
            }
            session = self._create(model_bytes, [(CUDA, cuda_options), CPU])
            self._cuda_works = session.get_providers()[0] == CUDA
            if self._cuda_works:
                return OnnxModel(session, device_id=device_id)  # CUDA: the thread waits on the GPU
            log.warning("cuda_unavailable", fallback=CPU, available=ort.get_available_providers())
        else:
            self._cuda_works = False
        if self.options.device is Device.CUDA:
            raise ModelLoadError(
                "device=cuda but the CUDA execution provider does not work here", code="no_cuda"
            )
        return OnnxModel(self._create(model_bytes, [CPU]), intra_op_threads=self.options.intra_op_threads)

    @property
    def provider(self) -> str | None:
        """The provider sessions get, once the first one was created."""
        if self._cuda_works is None:
            return None
        return CUDA if self._cuda_works else CPU
