"""Fetch, verify, load, warm, then swap: how a registry version becomes the live model.

Everything slow (the artifact download, the session creation, the warm-up) happens in the
calling thread, never on the event loop; only the final reference swap is handed to the loop.
A failure at any step leaves the model that was serving in place and counts
``driftline_inference_model_load_failures_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog

from driftline.kit.errors import DriftlineError
from driftline.services.inference import metrics
from driftline.services.inference.errors import DigestMismatch, ModelLoadError
from driftline.services.inference.models import ModelMeta, ModelSlots, Role, Runtime

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """What the registry says about one version."""

    name: str
    version: int
    sha256: str
    feature_names: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)


class ModelSource(Protocol):
    """The registry, as the loader needs it (``registry_source.RegistryModelSource`` adapts the
    registry client)."""

    def resolve(self, name: str, alias: str) -> ModelRef | None:
        """The version ``alias`` points at, or None when the alias is unset."""
        ...

    def describe(self, name: str, version: int) -> ModelRef: ...

    def artifact(self, name: str, version: int) -> bytes:
        """The artifact's bytes (the client may verify them too; the loader always does)."""
        ...


class ChangeType(StrEnum):
    ALIAS_SET = "alias_set"
    ALIAS_DELETED = "alias_deleted"
    OTHER = "other"


@dataclass(frozen=True)
class ModelChange:
    """A registry model event, as the loader needs it."""

    type: ChangeType
    model_name: str
    alias: str = ""
    version: int = 0
    sha256: str = ""
    event_id: str = ""


class Mirror(Protocol):
    """Another place that serves what this service serves (the compiled data plane, through
    ``dataplane.DataPlaneMirror``), kept in step with each role's model."""

    def load(self, artifact: bytes, meta: ModelMeta, runtime: Runtime, role: Role) -> Runtime:
        """Serve ``artifact`` in ``role``; raising fails the load here too. Returns what this
        service keeps in the role's slot: ``runtime``, or a stand-in for it when this process
        never runs the model itself."""
        ...

    def remove(self, role: Role) -> None:
        """Stop serving ``role``'s model (the challenger's alias was deleted)."""
        ...


@dataclass(frozen=True)
class WarmUp:
    batch_sizes: tuple[int, ...] = (1, 64)
    runs: int = 3


class ModelLoader:
    """Keeps the slots in step with the registry's aliases. Call it from a thread, never the loop."""

    def __init__(
        self,
        *,
        source: ModelSource,
        load_runtime: Callable[[bytes], Runtime],
        slots: ModelSlots,
        loop: asyncio.AbstractEventLoop,
        aliases: Mapping[str, Role],
        default_feature_names: Sequence[str] = (),
        warm_up: WarmUp | None = None,
        swap_timeout_s: float = 30.0,
        mirror: Mirror | None = None,
    ) -> None:
        """``mirror``: given each model's artifact, version, loaded runtime and role before it is
        swapped in here (the slot then holds what it returns), and told when the challenger
        goes; when a load there raises, the load fails and the model in that role keeps serving
        in both."""
        self._source = source
        self._load_runtime = load_runtime
        self._slots = slots
        self._loop = loop
        self._aliases = dict(aliases)
        self._default_features = tuple(default_feature_names)
        self._warm_up = warm_up or WarmUp()
        self._swap_timeout_s = swap_timeout_s
        self._mirror = mirror
        # One load at a time, and a resolve and its load under one hold: start-up resolution and
        # an alias event can then never install an older version over a newer one.
        self._lock = threading.RLock()

    @property
    def model_name(self) -> str:
        return self._slots.model_name

    def load_alias(self, alias: str) -> bool:
        """Resolve ``alias`` in the registry and serve what it points at. False when it failed or
        the alias is unset."""
        role = self._aliases[alias]
        with self._lock:
            try:
                ref = self._source.resolve(self.model_name, alias)
            except Exception as err:  # noqa: BLE001 - registry down at start: retried by the caller
                self._failed(role, "resolve_failed", err)
                return False
            if ref is None:
                log.info("alias_unset", model=self.model_name, alias=alias)
                return False
            return self._load(role, ref, expected_sha256="")

    def apply(self, change: ModelChange) -> bool:
        """Act on one model event; True when it changed what is served."""
        if change.model_name != self.model_name or change.alias not in self._aliases:
            return False
        role = self._aliases[change.alias]
        if change.type is ChangeType.ALIAS_DELETED:
            if role is Role.CHAMPION:
                # Never stop serving: a champion stays until another version replaces it.
                log.warning("champion_alias_deleted_keeping_model", model=self.model_name)
                return False
            if self._mirror is not None:
                self._mirror.remove(role)
            self._swap(self._slots.remove(role))
            return True
        if change.type is not ChangeType.ALIAS_SET or change.version <= 0:
            return False
        try:
            ref = self._source.describe(self.model_name, change.version)
        except Exception as err:  # noqa: BLE001 - any registry failure keeps the old model
            self._failed(role, "describe_failed", err)
            return False
        return self._load(role, ref, expected_sha256=change.sha256)

    def _load(self, role: Role, ref: ModelRef, *, expected_sha256: str) -> bool:
        with self._lock:
            current = self._slots.serving(role)
            if current is not None and current.version == ref.version and current.sha256 == ref.sha256:
                log.info("model_already_live", model=ref.name, version=ref.version, role=role.value)
                return False
            started = time.perf_counter()
            try:
                data = self._source.artifact(ref.name, ref.version)
                digest = hashlib.sha256(data).hexdigest()
                for wanted in (ref.sha256, expected_sha256):
                    if wanted and wanted != digest:
                        raise DigestMismatch(
                            f"artifact of {ref.name} v{ref.version} has sha256 {digest}, expected {wanted}"
                        )
                runtime = self._load_runtime(data)
                warm_s = runtime.warm_up(self._warm_up.batch_sizes, self._warm_up.runs)
                meta = ModelMeta(
                    name=ref.name,
                    version=ref.version,
                    sha256=digest,
                    feature_names=ref.feature_names or self._default_features,
                    threshold=_threshold(ref.params),
                )
                if self._mirror is not None:
                    runtime = self._mirror.load(data, meta, runtime, role)
                self._swap(self._slots.install(role, meta, runtime))
            except Exception as err:  # noqa: BLE001 - whatever failed, the old model keeps serving
                reason = err.code if isinstance(err, DriftlineError) else "load_failed"
                self._failed(role, reason, err, version=ref.version)
                return False
            log.info(
                "model_loaded",
                model=ref.name,
                version=ref.version,
                role=role.value,
                provider=runtime.provider,
                warm_ms=round(warm_s * 1000, 1),
                total_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return True

    def _swap(self, coro: Coroutine[Any, Any, object]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=self._swap_timeout_s)

    @staticmethod
    def _failed(role: Role, reason: str, err: BaseException, **context: object) -> None:
        metrics.MODEL_LOAD_FAILURES.labels(role.value, reason).inc()
        log.error("model_load_failed", role=role.value, reason=reason, error=str(err), **context)


def _threshold(params: Mapping[str, str]) -> float | None:
    raw = params.get("decision_threshold")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise ModelLoadError(f"decision_threshold {raw!r} is not a number", code="bad_threshold") from err
    if not 0.0 <= value <= 1.0:
        raise ModelLoadError(f"decision_threshold {value} is outside [0, 1]", code="bad_threshold")
    return value
