"""One retrain, start to finish, and the record of why it ended as it did.

build the set -> check it holds enough frauds -> train -> convert to ONNX and check parity ->
score challenger and champion on the same holdout -> register the challenger with lineage and a
reference sample -> promote by compare-and-swap (or leave pending) -> record the run, whatever
happened.

The challenger's decision threshold is chosen on out-of-fold scores of its training rows, so the
holdout (the most recent rows) stays unseen by both the model and its threshold: the gate judges
both models' ranking and operating points (recall and precision at their own thresholds) on it.

Every run, failed and deferred ones included, is recorded in the registry with its outcome and
the reason. A run short of labelled data is *deferred* when its trigger batch allows it: it is
recorded (outcome DEFERRED, reason ``deferred: ...``) and the scheduler tries the batch again later.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import structlog

from driftline.kit.codec import to_timestamp, utcnow
from driftline.kit.errors import (
    Aborted,
    DataLoss,
    DriftlineError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from driftline.kit.registry_client import idle_versions
from driftline.registry.v1 import registry_pb2
from driftline.services.trainer import convert, gate
from driftline.services.trainer.dataset import DatasetBuilder, TrainingSet
from driftline.services.trainer.errors import InsufficientData, RefusedForNow
from driftline.services.trainer.registry import Registry
from driftline.services.trainer.train import TrainParams, predict_native, train_model
from driftline.services.trainer.triggers import DEGRADATION, TriggerBatch

log = structlog.get_logger(__name__)

#: Param keys (besides the hyper-parameters) that ``--reproduce`` reads back.
P_LABELS_UNTIL = "labels_ingested_until"
P_HOLDOUT = "holdout_fraction"
#: The score at or above which the version says fraud; inference and the drift service read it.
P_THRESHOLD = "decision_threshold"


@dataclass(frozen=True)
class RunnerConfig:
    model_name: str = "fraud"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    holdout_fraction: float = 0.25
    parity_tolerance: float = 1e-5
    reference_rows: int = 500
    train: TrainParams = field(default_factory=TrainParams)
    gate: gate.GateConfig = field(default_factory=gate.GateConfig)
    code_revision: str = "unknown"
    actor: str = "driftline-trainer"
    #: Fewest frauds among the training rows.
    min_positives: int = 20
    #: Fewest frauds in the holdout, where recall at the decision threshold is compared.
    min_holdout_positives: int = 10
    #: Refusals of a degradation batch deferred (tried again later) before one is final.
    refused_retries: int = 6
    #: After a run that registers, archive the versions no alias points at but the newest this
    #: many (None: archive nothing).
    keep_idle_versions: int | None = None


@dataclass
class RunResult:
    """What one retrain did; ``outcome`` is a ``registry_pb2.RunOutcome`` value."""

    run_id: str
    outcome: int
    reason: str
    trigger: str
    trigger_id: str
    version: int = 0
    champion_before: int = 0
    champion_after: int = 0
    data_hash: str = ""
    data_start: datetime | None = None
    data_end: datetime | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    recorded: bool = False
    #: Versions this run's retention archived (``RunnerConfig.keep_idle_versions``).
    archived: list[int] = field(default_factory=list)

    @property
    def deferred(self) -> bool:
        """Too little labelled data yet (or a refusal too early to be final): the batch is to be
        tried again."""
        return self.outcome == registry_pb2.RUN_OUTCOME_DEFERRED

    @property
    def outcome_name(self) -> str:
        return registry_pb2.RunOutcome.Name(self.outcome).removeprefix("RUN_OUTCOME_").lower()

    @property
    def promoted(self) -> bool:
        return self.outcome == registry_pb2.RUN_OUTCOME_PROMOTED


@dataclass(frozen=True)
class Challenger:
    """A trained, converted, parity-checked model and what it was trained on."""

    artifact: bytes
    training_set: TrainingSet
    holdout: np.ndarray
    holdout_scores: np.ndarray
    parity_max_abs_diff: float
    reference: registry_pb2.ReferenceSample
    #: Score at or above which the model says fraud: the F1-best cut on out-of-fold scores of
    #: the training rows, to the six decimals the version's ``decision_threshold`` param stores.
    decision_threshold: float = 0.5


#: Folds of the out-of-fold scores the decision threshold is chosen on.
THRESHOLD_FOLDS = 3


def out_of_fold_scores(
    features: np.ndarray, labels: np.ndarray, params: TrainParams, folds: int = THRESHOLD_FOLDS
) -> np.ndarray:
    """Each row's score from a model trained on the other folds (contiguous blocks in time order).

    Boosted trees' in-sample scores are overconfident, and a cut chosen on the holdout would be
    judged on the rows that chose it (the F1-best cut of a set always catches some of its
    frauds). Contiguous blocks keep a burst of related events mostly inside one fold.
    """
    bounds = np.linspace(0, len(labels), folds + 1).astype(int)
    scores = np.empty(len(labels), dtype=np.float64)
    for lo, hi in itertools.pairwise(bounds):
        rest = np.r_[0:lo, hi : len(labels)]
        model = train_model(features[rest], labels[rest], params)
        scores[lo:hi] = predict_native(model, features[lo:hi])
    return scores


def served_threshold(threshold: float) -> float:
    """The threshold as the ``decision_threshold`` param stores it (six decimals, rounded down
    so that the row it was cut at stays flagged)."""
    return float(np.floor(threshold * 1e6) / 1e6)


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score cut with the best F1 on these rows (0.5 when there are no positives).

    A model retrained soon after a concept drift has seen few examples of the new pattern, so
    its scores for them sit below 0.5: a fixed cut would catch none of them.
    """
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        return 0.5
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], labels[order].astype(float)
    tp = np.cumsum(hits)
    predicted = np.arange(1, len(hits) + 1)
    f1 = 2 * tp / (predicted + positives)
    # Only cut between distinct scores, so the threshold separates exactly the counted rows.
    distinct = np.r_[sorted_scores[1:] < sorted_scores[:-1], True]
    best = int(np.argmax(np.where(distinct, f1, -1.0)))
    return float(np.clip(sorted_scores[best], 0.01, 0.99))


def fit_challenger(
    training_set: TrainingSet,
    params: TrainParams,
    *,
    holdout_fraction: float,
    parity_tolerance: float,
    reference_rows: int,
    stages: dict[str, float] | None = None,
    choose_threshold: bool = True,
) -> Challenger:
    """Train on the older rows, convert, and check ONNX parity on the holdout (raises ParityError).

    ``choose_threshold=False`` skips the out-of-fold models and leaves the threshold at 0.5
    (``--reproduce`` compares models, not thresholds).
    """
    stages = stages if stages is not None else {}
    train_idx, holdout_idx = training_set.split(holdout_fraction)
    x, y = training_set.features, training_set.labels
    with _timed(stages, "train"):
        model = train_model(x[train_idx], y[train_idx], params)
    with _timed(stages, "convert"):
        artifact = convert.to_onnx(model, x.shape[1])
        scorer = convert.OnnxScorer(artifact)
        holdout_scores = scorer.predict(x[holdout_idx])
        diff = convert.check_parity(predict_native(model, x[holdout_idx]), holdout_scores, parity_tolerance)
    rng = np.random.default_rng(params.seed)
    picked = np.sort(rng.choice(train_idx, size=min(reference_rows, len(train_idx)), replace=False))
    reference = registry_pb2.ReferenceSample(
        feature_names=list(training_set.feature_names),
        rows=len(picked),
        values=x[picked].astype(np.float32).astype(np.float64).ravel().tolist(),
        scores=scorer.predict(x[picked]).tolist(),
    )
    threshold = gate.DECISION_THRESHOLD
    if choose_threshold:
        with _timed(stages, "threshold"):
            oof = out_of_fold_scores(x[train_idx], y[train_idx], params)
            threshold = served_threshold(best_f1_threshold(y[train_idx], oof))
    return Challenger(artifact, training_set, holdout_idx, holdout_scores, diff, reference, threshold)


class RetrainRunner:
    """Runs retrains against a dataset builder and a registry; one call is one recorded run."""

    def __init__(
        self,
        config: RunnerConfig,
        dataset: DatasetBuilder,
        registry: Registry,
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self._dataset = dataset
        self._registry = registry
        self._now = now

    def run(self, batch: TriggerBatch) -> RunResult:
        """Retrain on the recent horizon for a batch of coalesced triggers."""
        extra = {"coalesced_triggers": _id_list(batch.ids)} if len(batch.triggers) > 1 else {}
        degraded = any(t.kind == DEGRADATION for t in batch.triggers)
        if batch.attempt > 1:
            extra["attempt"] = str(batch.attempt)
        return self.run_with(
            self._dataset.build_recent,
            trigger=batch.primary.kind,
            trigger_id=batch.primary.trigger_id,
            extra_params=extra,
            may_defer=batch.may_defer,
            # Only when live feedback measured the champion's fall: a drift report alone may be a
            # false alarm, whose refusal is the right final answer.
            retry_refusal=batch.may_defer and degraded and batch.attempt <= self.config.refused_retries,
            champion_degraded=degraded,
        )

    def run_with(
        self,
        build: Callable[[], TrainingSet],
        *,
        trigger: str,
        trigger_id: str,
        extra_params: Mapping[str, str] | None = None,
        may_defer: bool = False,
        retry_refusal: bool = False,
        champion_degraded: bool = False,
    ) -> RunResult:
        """Retrain on the set ``build`` returns; never raises for a failed run, records it instead.

        With ``may_defer``, a set short of labelled data (``InsufficientData``) ends the run as
        deferred rather than failed: the caller tries again once more labels have arrived. With
        ``retry_refusal`` (set only together with ``may_defer``), so does a refused challenger
        (``RefusedForNow``, nothing registered): right after a change, labels arrive late and the
        window holds too few of the new pattern to learn it, or the holdout does not show yet
        what the live feedback measured. While a drift lasts the drift service reminds only once
        per cooldown (minutes), so a refusal made that early must not be final. ``champion_degraded``: live
        feedback measured the champion's fall, so the gate also asks for a better operating point
        (``gate.py``).
        """
        cfg = self.config
        started_at = self._now()
        t0 = time.perf_counter()
        result = RunResult(
            run_id=uuid.uuid4().hex,
            outcome=registry_pb2.RUN_OUTCOME_FAILED,
            reason="",
            trigger=trigger,
            trigger_id=trigger_id,
        )
        result.params = {
            **cfg.train.to_params(),
            P_HOLDOUT: repr(cfg.holdout_fraction),
            "gate_metric": cfg.gate.metric,
            "gate_margin": repr(cfg.gate.margin),
            "gate_max_recall_drop": repr(cfg.gate.max_recall_drop),
            "gate_better_f1_when_degraded": str(champion_degraded and cfg.gate.better_f1_when_degraded),
            "threshold_folds": str(THRESHOLD_FOLDS),
            **(extra_params or {}),
        }
        log.info("retrain_started", run_id=result.run_id, trigger=trigger, trigger_id=trigger_id)
        try:
            self._run(build, result, retry_refusal=retry_refusal, champion_degraded=champion_degraded)
        except InsufficientData as err:
            result.outcome = (
                registry_pb2.RUN_OUTCOME_DEFERRED if may_defer else registry_pb2.RUN_OUTCOME_FAILED
            )
            result.reason = f"{result.outcome_name}: {err.code}: {err}"
        except DriftlineError as err:
            result.outcome = registry_pb2.RUN_OUTCOME_FAILED
            result.reason = f"failed: {err.code}: {err}"
        except Exception as err:
            # A failed run must still be recorded; the traceback goes to the log.
            log.exception("retrain_error", run_id=result.run_id)
            result.outcome = registry_pb2.RUN_OUTCOME_FAILED
            result.reason = f"failed: {type(err).__name__}: {err}"
        result.duration_s = time.perf_counter() - t0
        result.metrics["duration_seconds"] = result.duration_s
        self._record(result, started_at)
        if result.version and cfg.keep_idle_versions is not None:
            result.archived = self._retire_idle_versions(cfg.keep_idle_versions, result.run_id)
        log.info(
            "retrain_finished",
            run_id=result.run_id,
            outcome=result.outcome_name,
            reason=result.reason,
            version=result.version,
            seconds=round(result.duration_s, 3),
        )
        return result

    def _run(
        self,
        build: Callable[[], TrainingSet],
        result: RunResult,
        *,
        retry_refusal: bool,
        champion_degraded: bool,
    ) -> None:
        cfg = self.config
        stages = result.stage_seconds
        with _timed(stages, "dataset"):
            training_set = build()
        result.data_hash = training_set.content_hash
        result.data_start, result.data_end = training_set.data_start, training_set.data_end
        result.params[P_LABELS_UNTIL] = training_set.labels_ingested_until.isoformat()
        self._require_positives(training_set, result)
        challenger = fit_challenger(
            training_set,
            cfg.train,
            holdout_fraction=cfg.holdout_fraction,
            parity_tolerance=cfg.parity_tolerance,
            reference_rows=cfg.reference_rows,
            stages=stages,
        )
        result.params[P_THRESHOLD] = f"{challenger.decision_threshold:.6f}"
        y_holdout = training_set.labels[challenger.holdout]
        with _timed(stages, "evaluate"):
            mine = gate.evaluate(y_holdout, challenger.holdout_scores)
            my_point = gate.operating_point(
                y_holdout, challenger.holdout_scores, challenger.decision_threshold
            )
            champion = self._score_champion(training_set, challenger.holdout)
            theirs = their_point = None
            if champion.scores is not None:
                theirs = gate.evaluate(y_holdout, champion.scores)
                their_point = gate.operating_point(y_holdout, champion.scores, champion.threshold)
        champion_version = champion.version
        verdict = gate.decide(
            cfg.gate,
            mine,
            theirs,
            champion_version=champion_version,
            champion_problem=champion.problem,
            challenger_point=my_point,
            champion_point=their_point,
            champion_degraded=champion_degraded,
        )
        result.champion_before = result.champion_after = champion_version
        result.metrics.update({f"holdout_{k}": v for k, v in mine.items()})
        result.metrics.update(_point_metrics("holdout", my_point))
        if theirs is not None and their_point is not None:
            result.metrics.update({f"champion_holdout_{k}": v for k, v in theirs.items()})
            result.metrics.update(_point_metrics("champion_holdout", their_point))
            result.metrics["champion_decision_threshold"] = their_point.threshold
        result.metrics.update(
            {
                "train_rows": float(len(training_set) - len(challenger.holdout)),
                "holdout_rows": float(len(challenger.holdout)),
                "dropped_rows": float(training_set.dropped_rows),
                "parity_max_abs_diff": challenger.parity_max_abs_diff,
            }
        )
        # More labels do not make an unscorable champion scorable: that refusal is final now.
        if verdict.decision is gate.Decision.REJECT and retry_refusal and not champion.problem:
            raise RefusedForNow(f"{verdict.reason}; trying again with the labels that arrive meanwhile")
        with _timed(stages, "register"):
            version = self._register(challenger, result, champion_version, verdict.reason)
        result.version = version
        with _timed(stages, "promote"):
            self._apply(verdict, result, version, champion_version)
        result.metrics.update({f"stage_{k}_seconds": v for k, v in stages.items()})

    def _require_positives(self, training_set: TrainingSet, result: RunResult) -> None:
        """Raise ``InsufficientData`` unless every part of the set holds enough frauds.

        Too few frauds to learn from make a model that ranks by chance and catches nothing; too
        few in the holdout make its recall a coin toss that the gate cannot compare.
        """
        cfg = self.config
        labels = training_set.labels
        train_idx, holdout_idx = training_set.split(cfg.holdout_fraction)
        in_train, in_holdout = int(labels[train_idx].sum()), int(labels[holdout_idx].sum())
        result.metrics["train_positives"] = float(in_train)
        result.metrics["holdout_positives"] = float(in_holdout)
        short = []
        if in_train < cfg.min_positives:
            short.append(f"{in_train} among the {len(train_idx)} training rows (need {cfg.min_positives})")
        if in_holdout < cfg.min_holdout_positives:
            short.append(
                f"{in_holdout} among the {len(holdout_idx)} holdout rows (need {cfg.min_holdout_positives})"
            )
        if short:
            raise InsufficientData(f"too few positive labels: {'; '.join(short)}")

    def champion_version(self) -> int:
        """The version the champion alias points at now (0: there is no champion)."""
        cfg = self.config
        try:
            return int(self._registry.get_version(cfg.model_name, alias=cfg.champion_alias).version)
        except NotFound:
            return 0

    def _score_champion(self, training_set: TrainingSet, holdout: np.ndarray) -> ChampionScores:
        cfg = self.config
        try:
            champion = self._registry.get_version(cfg.model_name, alias=cfg.champion_alias)
        except NotFound:
            return ChampionScores(0)
        version = champion.version
        threshold = champion_threshold(champion.params)
        try:
            names = list(champion.signature.feature_names) or list(training_set.feature_names)
            columns = convert.feature_matrix(list(training_set.frame.columns), names)
            rows = training_set.frame.iloc[holdout, columns].to_numpy(dtype=np.float64)
            scorer = convert.OnnxScorer(self._registry.fetch_artifact(cfg.model_name, version))
            scores = scorer.predict(rows)
        except (InvalidArgument, DataLoss) as err:
            # The champion itself is unusable here (corrupt, or needs features that are gone);
            # transient errors (registry unavailable) propagate and fail the run instead.
            log.warning("champion_not_scored", version=version, error=str(err))
            return ChampionScores(version, threshold=threshold, problem=f"{err.code}: {err}")
        return ChampionScores(version, scores, threshold)

    def _register(self, challenger: Challenger, result: RunResult, parent: int, reason: str) -> int:
        cfg = self.config
        ts = challenger.training_set
        inputs, outputs = convert.signature(len(ts.feature_names))
        features = self._dataset.features
        request = registry_pb2.RegisterModelVersionRequest(
            name=cfg.model_name,
            artifact=challenger.artifact,
            signature=registry_pb2.Signature(
                inputs=[
                    registry_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in inputs
                ],
                outputs=[
                    registry_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs
                ],
                feature_names=list(ts.feature_names),
            ),
            feature_set=features.feature_set,
            feature_set_version=features.feature_set_version,
            metrics=result.metrics,
            params=result.params,
            lineage=registry_pb2.Lineage(
                data_start=to_timestamp(ts.data_start),
                data_end=to_timestamp(ts.data_end),
                data_hash=ts.content_hash,
                code_revision=cfg.code_revision,
                parent_version=parent,
                trigger=result.trigger,
                trigger_id=result.trigger_id,
                run_id=result.run_id,
            ),
            reference=challenger.reference,
            tags={"trainer": cfg.actor},
            reason=f"{result.trigger} retrain {result.run_id}: {reason}",
        )
        registered = self._registry.register(request)
        log.info("challenger_registered", version=registered.version, run_id=result.run_id)
        return int(registered.version)

    def _apply(self, verdict: gate.GateVerdict, result: RunResult, version: int, champion: int) -> None:
        cfg = self.config
        if verdict.decision is gate.Decision.REJECT:
            result.outcome, result.reason = registry_pb2.RUN_OUTCOME_REJECTED, verdict.reason
            return
        if verdict.decision is gate.Decision.PENDING_APPROVAL:
            result.outcome, result.reason = registry_pb2.RUN_OUTCOME_PENDING_APPROVAL, verdict.reason
            self._mark_challenger(version, verdict.reason)
            return
        try:
            self._registry.set_alias(cfg.model_name, cfg.champion_alias, version, champion, verdict.reason)
        except Aborted as err:
            # Someone moved the champion while this run evaluated against the old one: the
            # comparison no longer holds, so the challenger is not promoted.
            result.outcome = registry_pb2.RUN_OUTCOME_REJECTED
            result.reason = (
                f"not promoted: champion moved from v{champion} during the run ({err}); {verdict.reason}"
            )
            return
        result.outcome, result.reason, result.champion_after = (
            registry_pb2.RUN_OUTCOME_PROMOTED,
            verdict.reason,
            version,
        )
        log.info("challenger_promoted", version=version, previous=champion, reason=verdict.reason)

    def _mark_challenger(self, version: int, reason: str) -> None:
        cfg = self.config
        try:
            current = self._registry.get_version(cfg.model_name, alias=cfg.challenger_alias).version
        except NotFound:
            current = 0
        try:
            self._registry.set_alias(cfg.model_name, cfg.challenger_alias, version, current, reason)
        except Aborted:
            log.warning("challenger_alias_moved", version=version)

    def _retire_idle_versions(self, keep: int, run_id: str) -> list[int]:
        """Archive the model's versions no alias points at, but the newest ``keep``: their
        records stay, their artifacts are collected by the registry. A failure leaves the rest
        for the next run; the run itself stands."""
        name = self.config.model_name
        reason = f"retention: the newest {keep} versions no alias points at stay (run {run_id})"
        archived: list[int] = []
        try:
            for version in idle_versions(self._registry.list_versions(name), keep):
                try:
                    self._registry.archive(name, version, reason)
                except FailedPrecondition:
                    continue  # an alias moved to it meanwhile: it is in use
                archived.append(version)
        except DriftlineError as err:
            log.warning("retention_incomplete", model=name, archived=archived, error=str(err))
        if archived:
            log.info("versions_archived", model=name, versions=archived, keep=keep)
        return archived

    def _record(self, result: RunResult, started_at: datetime) -> None:
        cfg = self.config
        run = registry_pb2.Run(
            run_id=result.run_id,
            model_name=cfg.model_name,
            params=result.params,
            metrics=result.metrics,
            data_hash=result.data_hash,
            code_revision=cfg.code_revision,
            duration_seconds=result.duration_s,
            outcome=result.outcome,  # type: ignore[arg-type]
            outcome_reason=result.reason,
            version=result.version,
            trigger=result.trigger,
            trigger_id=result.trigger_id,
            started_at=to_timestamp(started_at),
        )
        if result.data_start is not None and result.data_end is not None:
            run.data_start.CopyFrom(to_timestamp(result.data_start))
            run.data_end.CopyFrom(to_timestamp(result.data_end))
        try:
            self._registry.record_run(run)
            result.recorded = True
        except DriftlineError as err:
            log.error("run_not_recorded", run_id=result.run_id, error=str(err))


@dataclass(frozen=True)
class ChampionScores:
    """The champion's scores on the holdout (None: no champion, or it cannot be scored)."""

    version: int
    scores: np.ndarray | None = None
    #: The threshold it serves with.
    threshold: float = gate.DECISION_THRESHOLD
    #: Why a champion that exists could not be scored ("" when it was, or when there is none).
    problem: str = ""


def champion_threshold(params: Mapping[str, str]) -> float:
    """A version's ``decision_threshold`` param, read as inference reads it; 0.5 without one."""
    raw = params.get(P_THRESHOLD)
    try:
        value = float(raw) if raw is not None else gate.DECISION_THRESHOLD
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        # Inference refuses to load such a version; judge it at the default cut rather than fail.
        log.warning("champion_threshold_invalid", value=raw)
        return gate.DECISION_THRESHOLD
    return value


def _point_metrics(prefix: str, point: gate.OperatingPoint) -> dict[str, float]:
    return {
        f"{prefix}_recall_at_threshold": point.recall,
        f"{prefix}_precision_at_threshold": point.precision,
    }


def _id_list(ids: list[str], limit: int = 3000) -> str:
    """Comma-joined ids, cut to fit a registry param value (at most 4096 characters)."""
    joined = ",".join(ids)
    if len(joined) <= limit:
        return joined
    kept: list[str] = []
    for trigger_id in ids:
        if len(",".join([*kept, trigger_id])) > limit:
            break
        kept.append(trigger_id)
    return f"{','.join(kept)},(+{len(ids) - len(kept)} more)"


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
