"""Predict by entity id: features from the online store, the staleness policy, the model through
its batcher, a label by threshold, and a prediction log record, without blocking on the log."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import numpy as np
import structlog

from driftline.featurestore.vectors import FeatureFrame, FeatureStatus, FeatureValue, StalenessPolicy
from driftline.kit.codec import utcnow
from driftline.kit.errors import FailedPrecondition, InvalidArgument, Unavailable
from driftline.kit.outages import OutagePolicy
from driftline.services.inference import metrics
from driftline.services.inference.errors import StaleFeatures, UnknownEntity
from driftline.services.inference.models import ModelSlots, Role, Route, ServingModel

log = structlog.get_logger(__name__)


class FeatureSource(Protocol):
    """The online store as the predictor needs it: ``driftline.featurestore.AsyncOnlineStore``."""

    async def read_frame(
        self, entity_ids: Sequence[str], *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> FeatureFrame:
        """Every entity's features, in one pipelined round trip, a row per entity in the order asked."""
        ...


def prediction_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, from one read of the OS's random source:
    ``str(uuid.uuid4())`` costs three times as much per id."""
    raw = bytearray(os.urandom(16 * count))
    ids = []
    for k in range(0, 16 * count, 16):
        raw[k + 6] = raw[k + 6] & 0x0F | 0x40  # version 4
        raw[k + 8] = raw[k + 8] & 0x3F | 0x80  # RFC 4122 variant
        h = raw[k : k + 16].hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


class PredictInput(NamedTuple):
    entity_id: str
    event_id: str = ""
    model_name: str = ""


class PredictionResult(NamedTuple):
    """One served (or shadow) prediction. A named tuple: immutable, and built in a fifth of the
    time of a frozen dataclass, once per row.

    The features it was scored on are row ``row`` of ``frame`` (the call's, in the model's
    columns), shared by the call's results: nothing is built per value unless asked for."""

    prediction_id: str
    entity_id: str
    event_id: str
    score: float
    label: int
    model_name: str
    model_version: int
    max_feature_age_seconds: float
    frame: FeatureFrame
    row: int
    served_by: Role
    predicted_at: datetime

    @property
    def features(self) -> tuple[FeatureValue, ...]:
        """The features used, in the model's order, with their times, ages and statuses."""
        return self.frame.feature_values(self.row)


class PredictionSink(Protocol):
    """Where every prediction is recorded (``prediction_log.PredictionLogger``). Never blocks."""

    def log_many(self, results: Sequence[PredictionResult]) -> None: ...


class Predictor:
    """Scores entities by id with the model each one is routed to."""

    def __init__(
        self,
        *,
        slots: ModelSlots,
        features: FeatureSource,
        sink: PredictionSink,
        policy: StalenessPolicy = StalenessPolicy.SERVE,
        threshold: float = 0.5,
        max_entities: int = 1024,
        max_pending_shadows: int = 256,
        outages: OutagePolicy | None = None,
    ) -> None:
        """``outages``: which errors of the feature source mean it cannot be reached (the
        consumers' policy, ``OutagePolicy(errors=REDIS_OUTAGE)``); callers get UNAVAILABLE for
        them, a status gRPC clients may retry, not INTERNAL."""
        self._slots = slots
        self._features = features
        self._sink = sink
        self._policy = policy
        # FAIL is enforced here, after unknown entities were told apart (NOT_FOUND).
        self._read_policy = StalenessPolicy.SERVE if policy is StalenessPolicy.FAIL else policy
        self._threshold = threshold
        self._max_entities = max_entities
        self._max_pending_shadows = max_pending_shadows
        self._unreachable = (outages or OutagePolicy()).errors
        self._shadows: set[asyncio.Task[None]] = set()
        self._features_seconds = metrics.STAGE_SECONDS.labels("features")
        self._predictions = {role: metrics.PREDICTIONS.labels(role.value) for role in Role}
        #: Column positions per (feature set, version, width, model features); None: all, in order.
        self._index_cache: dict[tuple[str, int, int, tuple[str, ...]], list[int] | None] = {}

    async def predict(
        self, inputs: Sequence[PredictInput], *, deadline: float | None = None
    ) -> list[PredictionResult]:
        """One result per input, in order. ``deadline`` is in ``loop.time()`` seconds."""
        if not inputs:
            raise InvalidArgument("no entities to score")
        if len(inputs) > self._max_entities:
            raise InvalidArgument(f"{len(inputs)} entities in one call; at most {self._max_entities}")
        entity_ids = []
        for item in inputs:
            if item.model_name:
                self._slots.check_name(item.model_name)
            if not item.entity_id:
                raise InvalidArgument("entity_id is empty")
            entity_ids.append(item.entity_id)
        routes = self._slots.route_all(entity_ids)
        first = routes[0]
        # Without a canary every entity shares one route: the common case takes no grouping.
        uniform = all(route is first for route in routes)
        held = [first.model] if uniform else list({id(r.model): r.model for r in routes}.values())
        for model in held:  # in-flight requests keep their model through a swap
            model.hold()
        try:
            started = time.perf_counter()
            try:
                frame = await self._features.read_frame(entity_ids, policy=self._read_policy)
            except self._unreachable as err:
                raise Unavailable(f"the online store cannot be reached: {type(err).__name__}") from err
            self._features_seconds.observe(time.perf_counter() - started)
            self._check(frame)
            if uniform:
                results = await self._score_rows(first.model, inputs, frame, deadline, first.model.role)
            else:
                results = await self._score_routed(routes, inputs, frame, deadline)
        finally:
            for model in held:
                model.release()
        self._sink.log_many(results)
        if uniform:
            self._predictions[first.model.role].inc(len(results))
        else:
            for result in results:
                self._predictions[result.served_by].inc()
        if first.shadow is not None:  # shadowing routes every entity the same way
            self._spawn_shadow(first.shadow, inputs, frame)
        return results

    async def _score_routed(
        self,
        routes: Sequence[Route],
        inputs: Sequence[PredictInput],
        frame: FeatureFrame,
        deadline: float | None,
    ) -> list[PredictionResult]:
        """Canary calls: each model scores its own entities, concurrently; results in input order."""
        groups: dict[int, tuple[ServingModel, list[int]]] = {}
        for i, route in enumerate(routes):
            groups.setdefault(id(route.model), (route.model, []))[1].append(i)
        scored = await asyncio.gather(
            *(
                self._score_rows(model, [inputs[i] for i in rows], frame.take(rows), deadline, model.role)
                for model, rows in groups.values()
            )
        )
        results: list[PredictionResult | None] = [None] * len(inputs)
        for (_, rows), group in zip(groups.values(), scored, strict=True):
            for i, result in zip(rows, group, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _check(self, frame: FeatureFrame) -> None:
        unknown = [frame.entity_ids[i] for i in frame.missing]
        if unknown:
            raise UnknownEntity(
                f"no features for entity {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else "")
            )
        if self._policy is StalenessPolicy.FAIL:
            bad = np.argwhere(frame.statuses != FeatureStatus.OK)
            if len(bad):
                row, column = bad[0].tolist()
                status = FeatureStatus(int(frame.statuses[row, column]))
                raise StaleFeatures(
                    f"feature {frame.names[column]} of {frame.entity_ids[row]} is {status.name} "
                    "and the staleness policy is fail"
                )

    def _columns(self, model: ServingModel, frame: FeatureFrame) -> list[int] | None:
        """Positions of the model's feature columns within the store's frame (cached); None when
        the model takes the frame's features as they are, in order."""
        # A feature set version always lists the same features in the same order.
        key = (frame.feature_set, frame.version, len(frame.names), model.meta.feature_names)
        try:
            return self._index_cache[key]
        except KeyError:
            pass
        have = frame.names
        want = model.meta.feature_names or have
        position = {name: i for i, name in enumerate(have)}
        missing = [name for name in want if name not in position]
        if missing:
            raise FailedPrecondition(
                f"model {model.name} v{model.version} needs features {missing} the store lacks"
            )
        index: list[int] | None = [position[name] for name in want]
        if index == list(range(len(have))):
            index = None
        self._index_cache[key] = index
        return index

    async def _score(
        self, model: ServingModel, frame: FeatureFrame, deadline: float | None
    ) -> tuple[list[float], FeatureFrame]:
        """Each row's score, and the frame of the features it was scored on (the model's columns)."""
        spec = model.feature_input
        if spec is None:
            raise FailedPrecondition(f"model {model.name} v{model.version} does not take one feature matrix")
        index = self._columns(model, frame)
        used = frame if index is None else frame.select(index)
        matrix = np.ascontiguousarray(used.values, dtype=spec.dtype)
        if not np.isfinite(matrix).all():
            raise FailedPrecondition("the online store returned a NaN or infinite feature value")
        outputs = await model.infer({spec.name: matrix}, deadline=deadline)
        return model.scores(outputs).tolist(), used

    async def _score_rows(
        self,
        model: ServingModel,
        inputs: Sequence[PredictInput],
        frame: FeatureFrame,
        deadline: float | None,
        role: Role,
    ) -> list[PredictionResult]:
        scores, used = await self._score(model, frame, deadline)
        return self._results(model, inputs, scores, used, role)

    def _results(
        self,
        model: ServingModel,
        inputs: Sequence[PredictInput],
        scores: Sequence[float],
        used: FeatureFrame,
        role: Role,
    ) -> list[PredictionResult]:
        now = utcnow()
        threshold = model.meta.threshold if model.meta.threshold is not None else self._threshold
        name, version = model.name, model.version
        # An entity's values share one age (the store keeps one event time per entity); none
        # (NaN) when MISSING, reported as 0.
        ages = [0.0 if age != age else age for age in used.ages.tolist()]
        return [
            PredictionResult(
                prediction_id,
                item.entity_id,
                item.event_id,
                score,
                int(score >= threshold),
                name,
                version,
                age,
                used,
                row,
                role,
                now,
            )
            for row, (item, score, age, prediction_id) in enumerate(
                zip(inputs, scores, ages, prediction_ids(len(inputs)), strict=True)
            )
        ]

    def _spawn_shadow(self, model: ServingModel, inputs: Sequence[PredictInput], frame: FeatureFrame) -> None:
        if len(self._shadows) >= self._max_pending_shadows:
            metrics.SHADOW_SKIPPED.inc()
            return
        model.hold()
        task = asyncio.get_running_loop().create_task(self._shadow(model, inputs, frame))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, model: ServingModel, inputs: Sequence[PredictInput], frame: FeatureFrame) -> None:
        try:
            results = await self._score_rows(model, inputs, frame, None, Role.SHADOW)
            self._sink.log_many(results)
            self._predictions[Role.SHADOW].inc(len(results))
        except Exception as err:  # noqa: BLE001 - a failing shadow never affects served traffic
            log.warning("shadow_failed", model=model.name, version=model.version, error=str(err))
        finally:
            model.release()

    async def drain(self) -> None:
        """Wait for pending shadow scorings (shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
