"""The promotion gate: challenger against champion on the same recent labelled holdout.

The challenger is promoted only when both hold:

* its score on the configured metric beats the champion's by at least the margin (against a
  degraded champion whose F1 it beats, see below: is no worse than the champion's by the margin);
* its operating point holds: at the decision threshold it would serve with, it catches some of
  the frauds, and its recall is at most ``max_recall_drop`` below the champion's recall at the
  champion's own threshold, on the same rows. A ranking metric such as AUC says nothing about
  the threshold, and a model retrained soon after a concept drift can rank well and still flag
  none of the new frauds at its cut;
* when live feedback measured the champion's fall (a degradation triggered the retrain), the
  challenger's F1 at its threshold also beats the champion's at the champion's: a retrain soon
  after a change trains on pre-change rows (the newest quarter is the holdout), and can beat a
  degraded champion's AUC by the margin while catching exactly the frauds it catches. Such a
  challenger may give up to ``max_recall_drop_when_degraded`` of the champion's recall: a
  champion degraded on precision catches frauds by flagging many legitimate events, and trading
  some recall for far fewer false alarms is the fix, not a loss. For the same reason it need only
  rank no worse than such a champion: a model degraded on precision can rank as well as any
  retrain, and what it lacks is its operating point.

A champion that exists but cannot be scored on the holdout (an unloadable artifact, a feature it
needs that is gone) is never beaten: the challenger is refused (registered, not promoted) and the
reason says why. Only when there is no champion at all does a model win on its own operating point.

With manual approval configured, a winner is left pending for a person to promote. Every
decision carries a sentence saying why, which the run record stores.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

from driftline.kit.errors import InvalidArgument

#: Threshold turning a probability into a label for the label-based metrics, and the threshold
#: of a version that records none (inference's default).
DECISION_THRESHOLD = 0.5
#: Recalls are fractions of the same count; this absorbs float rounding in the comparison.
_RECALL_EPSILON = 1e-9


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p))


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(y, p >= DECISION_THRESHOLD, zero_division=0))


def _average_precision(y: np.ndarray, p: np.ndarray) -> float:
    return float(average_precision_score(y, p))


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(accuracy_score(y, p >= DECISION_THRESHOLD))


def _neg_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return -float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


#: Gate metrics; every one is "higher is better" (log loss is negated).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": _auc,
    "f1": _f1,
    "average_precision": _average_precision,
    "accuracy": _accuracy,
    "neg_log_loss": _neg_log_loss,
}


def evaluate(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Every gate metric for one model's scores on the holdout."""
    if len(np.unique(labels)) != 2:
        raise InvalidArgument("the holdout needs both classes to be evaluated")
    return {name: fn(labels, scores) for name, fn in METRICS.items()}


@dataclass(frozen=True)
class OperatingPoint:
    """How a model does at the threshold it serves with (flagged: ``score >= threshold``)."""

    threshold: float
    recall: float
    precision: float
    positives: int
    flagged: int

    @property
    def f1(self) -> float:
        total = self.recall + self.precision
        return 2 * self.recall * self.precision / total if total else 0.0


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> OperatingPoint:
    """Recall and precision of ``scores >= threshold``, as inference labels (0.0 when undefined)."""
    flagged = scores >= threshold
    positives = int((labels == 1).sum())
    caught = int((flagged & (labels == 1)).sum())
    n_flagged = int(flagged.sum())
    return OperatingPoint(
        threshold=float(threshold),
        recall=caught / positives if positives else 0.0,
        precision=caught / n_flagged if n_flagged else 0.0,
        positives=positives,
        flagged=n_flagged,
    )


class Decision(enum.Enum):
    PROMOTE = "promote"
    REJECT = "reject"
    PENDING_APPROVAL = "pending_approval"


@dataclass(frozen=True)
class GateConfig:
    """What the challenger must achieve to be promoted."""

    metric: str = "auc"
    margin: float = 0.005
    manual_approval: bool = False
    #: Largest allowed fall of recall at the model's own threshold, challenger below champion.
    max_recall_drop: float = 0.10
    #: Against a champion whose live performance degraded, require a better F1 at the threshold.
    better_f1_when_degraded: bool = True
    #: The recall fall allowed instead, against a degraded champion, to a challenger whose F1 at
    #: its threshold is better (with ``better_f1_when_degraded``).
    max_recall_drop_when_degraded: float = 0.25

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidArgument(f"unknown gate metric {self.metric!r}; choose one of {sorted(METRICS)}")
        if not math.isfinite(self.margin):
            raise InvalidArgument("gate margin must be finite")
        if not 0.0 <= self.max_recall_drop <= 1.0:
            raise InvalidArgument("max_recall_drop must lie in [0, 1]")
        if not 0.0 <= self.max_recall_drop_when_degraded <= 1.0:
            raise InvalidArgument("max_recall_drop_when_degraded must lie in [0, 1]")


@dataclass(frozen=True)
class GateVerdict:
    decision: Decision
    reason: str
    challenger: float
    champion: float | None


def decide(
    config: GateConfig,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    *,
    champion_version: int = 0,
    champion_problem: str = "",
    challenger_point: OperatingPoint | None = None,
    champion_point: OperatingPoint | None = None,
    champion_degraded: bool = False,
) -> GateVerdict:
    """Compare the two models' holdout metrics and operating points.

    ``champion`` is None when there is no champion yet (``champion_version`` 0), or when champion
    ``champion_version`` could not be evaluated; then ``champion_problem`` says why (an unloadable
    artifact, a feature it needs that is gone) and the challenger is refused.
    ``challenger_point`` and ``champion_point`` are measured on the same rows, each at its own
    model's decision threshold; without a challenger point the operating point is not checked.
    ``champion_degraded``: live feedback measured the champion's fall (see the module docstring).
    """
    metric = config.metric
    mine = challenger[metric]
    theirs = None if champion is None else champion[metric]
    if theirs is None and (champion_version or champion_problem):
        # "Promote only when it wins": a champion that cannot be compared is not beaten.
        comparison = (
            f"champion v{champion_version} could not be scored on the evaluation set: "
            f"{champion_problem or 'no scores'}; challenger {metric}={mine:.4f}"
        )
        metric_wins, won = False, comparison
    elif theirs is None:
        comparison = f"no champion yet; challenger {metric}={mine:.4f}"
        metric_wins, won = True, comparison
    else:
        needed, why = theirs + config.margin, ""
        if mine < needed and _better_f1_than_degraded(
            config, challenger_point, champion_point, champion_degraded
        ):
            needed, why = theirs - config.margin, ": no worse, against a degraded champion with a better F1"
        comparison = (
            f"challenger {metric}={mine:.4f} vs champion v{champion_version} {metric}={theirs:.4f} "
            f"(margin {config.margin:g}, needs >= {needed:.4f}{why})"
        )
        metric_wins, won = mine >= needed, f"wins: {comparison}"
    point_problem, point_summary = _check_operating_point(
        config,
        challenger_point,
        None if champion is None else champion_point,
        champion_version,
        champion_degraded=champion_degraded,
    )
    if metric_wins and not point_problem:
        reason = f"{won}; {point_summary}" if point_summary else won
        return _winner(config, reason, mine, theirs)
    if not metric_wins:
        extra = point_problem or point_summary
        reason = f"refused: {comparison}" + (f"; {extra}" if extra else "")
    elif theirs is None:
        reason = f"refused: {point_problem}; {comparison}"
    else:
        reason = f"refused: {point_problem}; on {metric} alone it would win: {comparison}"
    return GateVerdict(Decision.REJECT, reason, mine, theirs)


def _better_f1_than_degraded(
    config: GateConfig, mine: OperatingPoint | None, theirs: OperatingPoint | None, champion_degraded: bool
) -> bool:
    """Whether the champion degraded live and the challenger's F1 at its threshold beats its own:
    then the challenger need only rank no worse (a champion degraded on precision can rank as
    well as any retrain; what it lacks is its operating point)."""
    if not (champion_degraded and config.better_f1_when_degraded) or mine is None or theirs is None:
        return False
    return mine.positives > 0 and mine.recall > 0 and mine.f1 > theirs.f1 + _RECALL_EPSILON


def _check_operating_point(
    config: GateConfig,
    mine: OperatingPoint | None,
    theirs: OperatingPoint | None,
    champion_version: int,
    *,
    champion_degraded: bool = False,
) -> tuple[str, str]:
    """(why the challenger's operating point is refused or "", a summary of it or "")."""
    if mine is None or mine.positives == 0:
        return "", ""
    at = f"at its decision threshold {mine.threshold:.4f}"
    champion = (
        ""
        if theirs is None
        else (
            f"champion v{champion_version} recall={theirs.recall:.2f} (precision {theirs.precision:.2f}) "
            f"at its {theirs.threshold:.4f}"
        )
    )
    if mine.recall == 0.0:
        problem = f"challenger catches none of the {mine.positives} frauds {at} (recall 0.00)"
        return (f"{problem} vs {champion}" if champion else problem), ""
    comparison = (
        f"challenger recall={mine.recall:.2f} (precision {mine.precision:.2f}) {at}"
        + (f" vs {champion}" if champion else "")
        + f", on {mine.positives} frauds"
    )
    if theirs is None:
        return "", comparison
    better_than_degraded = _better_f1_than_degraded(config, mine, theirs, champion_degraded)
    drop, why = config.max_recall_drop, ""
    below_usual_floor = mine.recall < theirs.recall - drop - _RECALL_EPSILON
    if better_than_degraded and below_usual_floor and config.max_recall_drop_when_degraded > drop:
        drop = config.max_recall_drop_when_degraded
        why = f", against a degraded champion with a better F1 ({mine.f1:.2f} vs {theirs.f1:.2f})"
    floor = theirs.recall - drop
    if mine.recall < floor - _RECALL_EPSILON:
        return f"{comparison} (max recall drop {drop:g}{why}, needs >= {floor:.2f})", ""
    if champion_degraded and config.better_f1_when_degraded and not better_than_degraded:
        return (
            f"{comparison}; the champion's live performance degraded and the challenger is no better at "
            f"its threshold (F1 {mine.f1:.2f} vs {theirs.f1:.2f})"
        ), ""
    return "", comparison + (f" (recall drop allowed {drop:g}{why})" if why else "")


def _winner(config: GateConfig, reason: str, mine: float, theirs: float | None) -> GateVerdict:
    if config.manual_approval:
        return GateVerdict(Decision.PENDING_APPROVAL, f"{reason}; waiting for manual approval", mine, theirs)
    return GateVerdict(Decision.PROMOTE, reason, mine, theirs)
