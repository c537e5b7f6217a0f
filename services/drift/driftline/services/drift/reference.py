"""Where reference samples come from: the registry, through a synchronous adapter.

The consumer loop is synchronous and the kit's ``RegistryClient`` is asyncio; the adapter owns
one event loop in a daemon thread and runs each call there. Tests pass any object with the
:class:`ReferenceSource` shape instead (an in-memory registry).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import numpy as np
import structlog

from driftline.kit.errors import DriftlineError
from driftline.kit.registry_client import RegistryClient, RegistryClientSettings
from driftline.registry.v1 import registry_pb2
from driftline.services.drift.errors import InvalidReference, ReferenceUnavailable
from driftline.services.drift.monitor import DriftMonitor, DriftReportData, Reference

log = structlog.get_logger(__name__)

T = TypeVar("T")


class ReferenceSource(Protocol):
    def get_version(self, name: str, *, alias: str) -> registry_pb2.ModelVersion:
        """The version ``alias`` points at, with its reference sample."""
        ...


class RegistryReferenceSource:
    """``ReferenceSource`` over the registry's gRPC API, for synchronous callers."""

    def __init__(self, settings: RegistryClientSettings, *, timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registry-client", daemon=True)
        self._thread.start()
        self._client = self._run(self._make_client())

    async def _make_client(self) -> RegistryClient:
        return RegistryClient.from_settings(self._settings, actor="drift")

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=self._timeout_s)

    def get_version(self, name: str, *, alias: str) -> registry_pb2.ModelVersion:
        try:
            return self._run(self._client.get_version(name, alias=alias, omit_reference=False))
        except DriftlineError:
            raise
        except TimeoutError as err:
            raise ReferenceUnavailable(f"registry did not answer for {name}@{alias}") from err

    def close(self) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


def decision_threshold(params: Mapping[str, str], default: float) -> float:
    """The version's ``decision_threshold`` param (as inference reads it), else ``default``."""
    raw = params.get("decision_threshold")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else default


def reference_from_version(
    version: registry_pb2.ModelVersion, *, default_threshold: float = 0.5
) -> Reference:
    """The detectors' view of a registered version's ``ReferenceSample``."""
    sample = version.reference
    names = tuple(sample.feature_names) or tuple(version.signature.feature_names)
    rows = int(sample.rows)
    values = np.asarray(sample.values, dtype=float)
    if rows < 0 or (names and values.size != rows * len(names)):
        raise InvalidReference(
            f"{version.name} v{version.version}: {values.size} reference values for {rows} rows "
            f"of {len(names)} features"
        )
    scores = np.asarray(sample.scores, dtype=float)
    if scores.size and scores.size != rows:
        raise InvalidReference(f"{version.name} v{version.version}: {scores.size} scores for {rows} rows")
    return Reference(
        model_name=version.name,
        model_version=int(version.version),
        feature_names=names,
        values=values.reshape(rows, len(names)) if names else np.empty((rows, 0)),
        scores=scores,
        decision_threshold=decision_threshold(version.params, default_threshold),
        feature_set=version.feature_set,
        feature_set_version=int(version.feature_set_version),
    )


class ReferenceWatcher:
    """Keeps the monitor on the reference of the version the watched alias points at.

    Loads it on start and on every ALIAS_SET of the watched model and alias; a failed load (the
    registry is down, the sample is unusable) is retried every ``retry_s`` seconds, and the
    detectors keep the previous reference meanwhile.
    """

    def __init__(
        self,
        source: ReferenceSource,
        monitor: DriftMonitor,
        *,
        model_name: str,
        alias: str,
        default_threshold: float = 0.5,
        retry_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._monitor = monitor
        self.model_name = model_name
        self.alias = alias
        self._default_threshold = default_threshold
        self._retry_s = retry_s
        self._clock = clock
        self._stale = True
        self._retry_at = -math.inf

    @property
    def loaded(self) -> bool:
        return self._monitor.reference is not None and not self._stale

    def ensure_loaded(self) -> list[DriftReportData]:
        """Load the reference if it is missing or stale and the retry delay has passed."""
        if not self._stale or self._clock() < self._retry_at:
            return []
        return self._load()

    def on_event(self, event: registry_pb2.ModelEvent) -> list[DriftReportData]:
        if event.model_name != self.model_name or event.alias != self.alias:
            return []
        if event.type == registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET:
            if event.version == self._monitor.version and not self._stale:
                return []  # a replayed event: this version is already watched
            log.info("alias_moved", model=self.model_name, alias=self.alias, version=event.version)
            self._stale = True
            return self._load()
        if event.type == registry_pb2.MODEL_EVENT_TYPE_ALIAS_DELETED:
            self._stale = False
            return self._monitor.unload(f"alias {self.alias} of {self.model_name} was deleted")
        return []

    def _load(self) -> list[DriftReportData]:
        try:
            version = self._source.get_version(self.model_name, alias=self.alias)
            reference = reference_from_version(version, default_threshold=self._default_threshold)
            reports = self._monitor.load(reference)
        except Exception as err:  # an unusable reference must not stop the loop: logged, retried
            if not isinstance(err, DriftlineError | ValueError):
                log.exception("reference_build_failed", model=self.model_name, alias=self.alias)
            self._retry_at = self._clock() + self._retry_s
            log.warning(
                "reference_load_failed",
                model=self.model_name,
                alias=self.alias,
                error=str(err),
                code=getattr(err, "code", "invalid"),
                retry_in_s=self._retry_s,
            )
            return []
        self._stale = False
        return reports
