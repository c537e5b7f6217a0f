"""Model slots per alias (champion, optional challenger), atomic swap, shadow and canary routing.

A swap replaces one reference on the event loop, after the new model was loaded and warmed
elsewhere (``loader.py``). Requests hold a lease on the model they resolved at their start, so
in-flight requests finish on the old model; the old model's batcher closes once its last lease
ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
import structlog

from driftline.services.inference import metrics
from driftline.services.inference.batcher import BatchingOptions, DynamicBatcher, Feeds
from driftline.services.inference.errors import ModelLoadError, ModelNotReady, UnknownModel
from driftline.services.inference.tensors import TensorSpec

log = structlog.get_logger(__name__)

#: Output names that hold the score, most preferred first (skl2onnx, onnxmltools, hand-built).
_SCORE_OUTPUTS = ("probabilities", "output_probability", "probability", "scores", "score")


class Role(StrEnum):
    """Which slot served a prediction (``PredictionLog.role``, ``Prediction.served_by``)."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"
    SHADOW = "shadow"


class Runtime(Protocol):
    """What a slot needs from a loaded model (``runtime.OnnxModel`` in production)."""

    provider: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: True when a run computes on the calling thread alone (see ``runtime.OnnxModel``).
    computes_on_caller: bool

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...

    def warm_up(self, batch_sizes: Sequence[int], runs: int) -> float: ...


@dataclass(frozen=True)
class ModelMeta:
    """Registry facts about the version a slot serves."""

    name: str
    version: int
    sha256: str = ""
    #: Model input columns, in order.
    feature_names: tuple[str, ...] = ()
    #: Per-version decision threshold (registry param ``decision_threshold``); None: the service's.
    threshold: float | None = None


@dataclass(frozen=True)
class RoutingOptions:
    """Shadow: the challenger scores every request, logged and never returned.
    Canary: ``canary_share`` of the entities (sticky, by hash) are served by the challenger."""

    shadow: bool = False
    canary_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError("canary_share must be within [0, 1]")
        if self.shadow and self.canary_share > 0:
            raise ValueError("choose shadow or canary, not both")


def canary_bucket(model_name: str, entity_id: str) -> float:
    """A stable number in [0, 1) per (model, entity): the entity is in the canary while it is
    below the share, so raising the share only ever adds entities."""
    digest = hashlib.blake2b(f"{model_name}\x00{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def score_output(outputs: Sequence[TensorSpec]) -> int | None:
    """Position of the output a model is scored by: the first float output with a score's name
    (``probabilities``, ...), else the first float output; None without one."""
    floats = [i for i, o in enumerate(outputs) if o.dtype.kind == "f"]
    for wanted in _SCORE_OUTPUTS:
        for i in floats:
            if outputs[i].name == wanted:
                return i
    return floats[0] if floats else None


def score_column(output: np.ndarray) -> np.ndarray:
    """One float score per row of a score output: the positive-class column of a probability
    matrix, or the single score column."""
    out = np.asarray(output)
    if out.ndim == 2:
        out = out[:, 1] if out.shape[1] >= 2 else out[:, 0]
    return out.reshape(-1).astype(np.float64, copy=False)


def feature_input(inputs: Sequence[TensorSpec], names: Sequence[str]) -> TensorSpec | None:
    """The one 2-D float input Predict-by-entity fills with feature columns, if the model has it."""
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].dtype.kind != "f":
        return None
    width = inputs[0].shape[1]
    if names and width is not None and width != len(names):
        raise ModelLoadError(
            f"model input {inputs[0].name} has {width} columns but the version lists {len(names)} features",
            code="signature_mismatch",
        )
    return inputs[0]


class ServingModel:
    """A loaded, warm model with its own batcher, and the leases of the requests using it."""

    def __init__(self, meta: ModelMeta, runtime: Runtime, batcher: DynamicBatcher, role: Role) -> None:
        self.meta = meta
        self.runtime = runtime
        self.batcher = batcher
        self.role = role
        self.loaded_at = time.time()
        self._leases = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._score_output = score_output(runtime.outputs)
        self.feature_input: TensorSpec | None = feature_input(runtime.inputs, meta.feature_names)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def version(self) -> int:
        return self.meta.version

    def hold(self) -> None:
        """One more request uses the model: it is not closed under it until ``release``."""
        self._leases += 1
        self._idle.clear()

    def release(self) -> None:
        self._leases -= 1
        if self._leases == 0:
            self._idle.set()

    @contextmanager
    def lease(self) -> Iterator[ServingModel]:
        """``hold`` for the duration of one request."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    async def infer(self, feeds: Feeds, *, deadline: float | None = None) -> list[np.ndarray]:
        """Run ``feeds`` through the batcher; outputs in the order of ``runtime.outputs``."""
        return await self.batcher.submit(feeds, deadline=deadline)

    def scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """One float score per row: the positive-class column of a probability matrix, or the
        single score column."""
        if self._score_output is None:
            raise ModelNotReady(f"model {self.name} v{self.version} has no float output to score with")
        return score_column(outputs[self._score_output])

    async def retire(self, timeout_s: float) -> None:
        """Wait for the requests still using this model (at most ``timeout_s``), then close it."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("retire_timeout", model=self.name, version=self.version, leases=self._leases)
        await self.batcher.close()
        log.info("model_retired", model=self.name, version=self.version, role=self.role)


@dataclass(frozen=True)
class Route:
    """Who serves one entity, and who scores it in the shadow."""

    model: ServingModel
    shadow: ServingModel | None = None


@dataclass
class ModelSlots:
    """The live models of one model name, by role; the one place a swap happens."""

    model_name: str
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    routing: RoutingOptions = field(default_factory=RoutingOptions)
    #: Called (on the loop) after every change, e.g. to flip health to SERVING.
    on_change: Callable[[], Awaitable[None]] | None = None
    retire_timeout_s: float = 30.0
    _models: dict[Role, ServingModel] = field(default_factory=dict)
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def champion(self) -> ServingModel | None:
        return self._models.get(Role.CHAMPION)

    @property
    def challenger(self) -> ServingModel | None:
        return self._models.get(Role.CHALLENGER)

    @property
    def ready(self) -> bool:
        return Role.CHAMPION in self._models

    def models(self) -> Mapping[Role, ServingModel]:
        return dict(self._models)

    def check_name(self, name: str) -> None:
        if name and name != self.model_name:
            raise UnknownModel(f"unknown model {name!r}; this server serves {self.model_name!r}")

    def route(self, entity_id: str) -> Route:
        """Champion, or challenger for canary entities; plus the shadow scorer when shadowing."""
        return self.route_all((entity_id,))[0]

    def route_all(self, entity_ids: Sequence[str]) -> list[Route]:
        """Each entity's route. Entities on the same side share one ``Route`` object, so a caller
        can tell a one-sided call by identity."""
        champion = self._models.get(Role.CHAMPION)
        if champion is None:
            raise ModelNotReady(f"no {self.model_name} champion is loaded yet")
        challenger = self._models.get(Role.CHALLENGER)
        share = self.routing.canary_share
        if challenger is None or self.routing.shadow or share <= 0:
            shadow = challenger if self.routing.shadow else None
            return [Route(champion, shadow=shadow)] * len(entity_ids)
        served, canary = Route(champion), Route(challenger)
        return [canary if canary_bucket(self.model_name, e) < share else served for e in entity_ids]

    def by_version(self, version: int | None) -> ServingModel:
        """The live model with this version (None: the champion)."""
        champion = self._models.get(Role.CHAMPION)
        if champion is None:
            raise ModelNotReady(f"no {self.model_name} champion is loaded yet")
        if version is None:
            return champion
        for model in self._models.values():
            if model.version == version:
                return model
        raise UnknownModel(f"version {version} of {self.model_name} is not loaded")

    def serving(self, role: Role) -> ModelMeta | None:
        model = self._models.get(role)
        return model.meta if model is not None else None

    async def install(self, role: Role, meta: ModelMeta, runtime: Runtime) -> ServingModel:
        """Put a loaded, warm model live in ``role``; the previous one retires after its requests."""
        batcher = DynamicBatcher(
            runtime.run,
            self.batching,
            alias=role.value,
            run_clock=time.thread_time if runtime.computes_on_caller else time.perf_counter,
        )
        model = ServingModel(meta, runtime, batcher, role)
        batcher.start()
        old = self._models.get(role)
        self._models[role] = model  # the swap: requests that start from here on get the new model
        if old is not None:
            metrics.MODEL_INFO.remove(old.name, role.value, str(old.version), old.meta.sha256)
            task = asyncio.get_running_loop().create_task(old.retire(self.retire_timeout_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        metrics.MODEL_INFO.labels(meta.name, role.value, str(meta.version), meta.sha256).set(1)
        metrics.MODEL_LOADED_TIMESTAMP.labels(role.value).set(model.loaded_at)
        metrics.MODEL_SWAPS.labels(role.value).inc()
        log.info(
            "model_live",
            model=meta.name,
            version=meta.version,
            role=role.value,
            previous=old.version if old else None,
            provider=runtime.provider,
        )
        if self.on_change is not None:
            await self.on_change()
        return model

    async def remove(self, role: Role) -> None:
        """Take a role's model out of service (the challenger when its alias is deleted)."""
        old = self._models.pop(role, None)
        if old is None:
            return
        metrics.MODEL_INFO.remove(old.name, role.value, str(old.version), old.meta.sha256)
        await old.retire(self.retire_timeout_s)
        if self.on_change is not None:
            await self.on_change()

    async def close(self) -> None:
        """Retire every model (after SIGTERM drained the server)."""
        models = list(self._models.values())
        self._models.clear()
        await asyncio.gather(*(m.retire(self.retire_timeout_s) for m in models), *self._retiring)
