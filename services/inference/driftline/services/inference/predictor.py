"""Predict by entity id: features from the online store, the staleness policy, the model through
its batcher, a label by threshold, and a prediction log record, without blocking on the log."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import structlog

from driftline.featurestore.vectors import EntityFeatures, FeatureStatus, FeatureValue, StalenessPolicy
from driftline.kit.codec import utcnow
from driftline.kit.errors import FailedPrecondition, InvalidArgument
from driftline.services.inference import metrics
from driftline.services.inference.errors import StaleFeatures, UnknownEntity
from driftline.services.inference.models import ModelSlots, Role, ServingModel

log = structlog.get_logger(__name__)


class FeatureSource(Protocol):
    """The online store as the predictor needs it: ``driftline.featurestore.AsyncOnlineStore``."""

    async def read(
        self, entity_ids: Sequence[str], *, now: Any = None, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> Sequence[EntityFeatures]:
        """Every entity's features, in one pipelined round trip, in the order asked."""
        ...


def _found(entity: EntityFeatures) -> bool:
    """Whether the store holds anything at all for this entity."""
    return any(v.status is not FeatureStatus.MISSING for v in entity.values)


@dataclass(frozen=True, slots=True)
class PredictInput:
    entity_id: str
    event_id: str = ""
    model_name: str = ""


@dataclass(frozen=True, slots=True)
class PredictionResult:
    prediction_id: str
    entity_id: str
    event_id: str
    score: float
    label: int
    model_name: str
    model_version: int
    max_feature_age_seconds: float
    features: tuple[FeatureValue, ...]
    served_by: Role
    predicted_at: datetime


class PredictionSink(Protocol):
    """Where every prediction is recorded (``prediction_log.PredictionLogger``). Never blocks."""

    def log(self, result: PredictionResult) -> None: ...


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
    ) -> None:
        self._slots = slots
        self._features = features
        self._sink = sink
        self._policy = policy
        self._threshold = threshold
        self._max_entities = max_entities
        self._max_pending_shadows = max_pending_shadows
        self._shadows: set[asyncio.Task[None]] = set()
        self._features_seconds = metrics.STAGE_SECONDS.labels("features")
        self._predictions = {role: metrics.PREDICTIONS.labels(role.value) for role in Role}
        self._index_cache: dict[tuple[str, int, int, tuple[str, ...]], list[int]] = {}

    async def predict(
        self, inputs: Sequence[PredictInput], *, deadline: float | None = None
    ) -> list[PredictionResult]:
        """One result per input, in order. ``deadline`` is in ``loop.time()`` seconds."""
        if not inputs:
            raise InvalidArgument("no entities to score")
        if len(inputs) > self._max_entities:
            raise InvalidArgument(f"{len(inputs)} entities in one call; at most {self._max_entities}")
        for item in inputs:
            self._slots.check_name(item.model_name)
            if not item.entity_id:
                raise InvalidArgument("entity_id is empty")
        routes = [self._slots.route(item.entity_id) for item in inputs]
        with ExitStack() as leases:
            held = {id(routes[0].model)}
            leases.enter_context(routes[0].model.lease())
            for route in routes:
                if id(route.model) not in held:  # a canary call: hold the challenger too
                    held.add(id(route.model))
                    leases.enter_context(route.model.lease())
            started = time.perf_counter()
            # FAIL is enforced below, after unknown entities were told apart (NOT_FOUND).
            policy = StalenessPolicy.SERVE if self._policy is StalenessPolicy.FAIL else self._policy
            readings = await self._features.read([item.entity_id for item in inputs], policy=policy)
            self._features_seconds.observe(time.perf_counter() - started)
            self._check(readings)
            groups: dict[int, tuple[ServingModel, list[int]]] = {}
            for i, route in enumerate(routes):
                groups.setdefault(id(route.model), (route.model, []))[1].append(i)
            results: list[PredictionResult | None] = [None] * len(inputs)
            if len(groups) == 1:  # the common case: no task per call
                model, rows = next(iter(groups.values()))
                scored = [await self._score(model, [readings[i] for i in rows], deadline)]
            else:
                scored = await asyncio.gather(
                    *(self._score(m, [readings[i] for i in rows], deadline) for m, rows in groups.values())
                )
            now = utcnow()
            for (model, rows), (scores, used) in zip(groups.values(), scored, strict=True):
                for j, i in enumerate(rows):
                    results[i] = self._result(inputs[i], model, float(scores[j]), used[j], model.role, now)
        final = [r for r in results if r is not None]
        for result in final:
            self._sink.log(result)
            self._predictions[result.served_by].inc()
        shadows = [(r.shadow, i) for i, r in enumerate(routes) if r.shadow is not None]
        if shadows:
            self._spawn_shadow(
                shadows[0][0], [inputs[i] for _, i in shadows], [readings[i] for _, i in shadows]
            )
        return final

    def _check(self, readings: Sequence[EntityFeatures]) -> None:
        unknown = [r.entity_id for r in readings if not _found(r)]
        if unknown:
            raise UnknownEntity(
                f"no features for entity {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else "")
            )
        if self._policy is StalenessPolicy.FAIL:
            for reading in readings:
                for feature in reading.values:
                    if feature.status is not FeatureStatus.OK:
                        raise StaleFeatures(
                            f"feature {feature.name} of {reading.entity_id} is {feature.status.name} "
                            "and the staleness policy is fail"
                        )

    def _columns(self, model: ServingModel, reading: EntityFeatures) -> list[int]:
        """Positions of the model's feature columns within the store's reading (cached)."""
        # A feature set version always lists the same features in the same order.
        key = (reading.feature_set, reading.version, len(reading.values), model.meta.feature_names)
        index = self._index_cache.get(key)
        if index is None:
            have = tuple(f.name for f in reading.values)
            want = model.meta.feature_names or have
            position = {name: i for i, name in enumerate(have)}
            missing = [name for name in want if name not in position]
            if missing:
                raise FailedPrecondition(
                    f"model {model.name} v{model.version} needs features {missing} the store lacks"
                )
            index = [position[name] for name in want]
            self._index_cache[key] = index
        return index

    async def _score(
        self, model: ServingModel, readings: Sequence[EntityFeatures], deadline: float | None
    ) -> tuple[np.ndarray, list[tuple[FeatureValue, ...]]]:
        spec = model.feature_input
        if spec is None:
            raise FailedPrecondition(f"model {model.name} v{model.version} does not take one feature matrix")
        used = []
        for reading in readings:
            index = self._columns(model, reading)
            used.append(tuple(reading.values[k] for k in index))
        matrix = np.array([[f.value for f in row] for row in used], dtype=spec.dtype)
        if not np.isfinite(matrix).all():
            raise FailedPrecondition("the online store returned a NaN or infinite feature value")
        outputs = await model.infer({spec.name: matrix}, deadline=deadline)
        return model.scores(outputs), used

    def _result(
        self,
        item: PredictInput,
        model: ServingModel,
        score: float,
        used: tuple[FeatureValue, ...],
        role: Role,
        now: datetime,
    ) -> PredictionResult:
        threshold = model.meta.threshold if model.meta.threshold is not None else self._threshold
        ages = [f.age_seconds for f in used if f.age_seconds is not None]
        return PredictionResult(
            prediction_id=str(uuid.uuid4()),
            entity_id=item.entity_id,
            event_id=item.event_id,
            score=score,
            label=int(score >= threshold),
            model_name=model.name,
            model_version=model.version,
            max_feature_age_seconds=max(ages, default=0.0),
            features=used,
            served_by=role,
            predicted_at=now,
        )

    def _spawn_shadow(
        self, model: ServingModel, inputs: list[PredictInput], readings: list[EntityFeatures]
    ) -> None:
        if len(self._shadows) >= self._max_pending_shadows:
            metrics.SHADOW_SKIPPED.inc()
            return
        lease = model.lease()
        lease.__enter__()
        task = asyncio.get_running_loop().create_task(self._shadow(model, inputs, readings, lease))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        model: ServingModel,
        inputs: list[PredictInput],
        readings: list[EntityFeatures],
        lease: AbstractContextManager[ServingModel],
    ) -> None:
        try:
            scores, used = await self._score(model, readings, None)
            now = utcnow()
            for item, score, row in zip(inputs, scores, used, strict=True):
                self._sink.log(self._result(item, model, float(score), row, Role.SHADOW, now))
                self._predictions[Role.SHADOW].inc()
        except Exception as err:  # noqa: BLE001 - a failing shadow never affects served traffic
            log.warning("shadow_failed", model=model.name, version=model.version, error=str(err))
        finally:
            lease.__exit__(None, None, None)

    async def drain(self) -> None:
        """Wait for pending shadow scorings (shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
