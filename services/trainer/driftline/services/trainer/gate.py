"""The promotion gate: challenger against champion on the same recent labelled holdout.

The challenger is promoted only when its score on the configured metric beats the champion's by
at least the margin. With manual approval configured, a winner is left pending for a person to
promote. Every decision carries a sentence saying why, which the run record stores.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

from driftline.kit.errors import InvalidArgument

#: Threshold turning a probability into a label for the label-based metrics.
DECISION_THRESHOLD = 0.5


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

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidArgument(f"unknown gate metric {self.metric!r}; choose one of {sorted(METRICS)}")
        if not math.isfinite(self.margin):
            raise InvalidArgument("gate margin must be finite")


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
) -> GateVerdict:
    """Compare the two models' holdout metrics.

    ``champion`` is None when there is no champion yet, or when it could not be evaluated; then
    ``champion_problem`` says why (an unloadable artifact, a feature it needs that is gone).
    """
    metric = config.metric
    mine = challenger[metric]
    if champion is None:
        why = champion_problem or "no champion yet"
        return _winner(config, f"{why}; challenger {metric}={mine:.4f}", mine, None)
    theirs = champion[metric]
    needed = theirs + config.margin
    comparison = (
        f"challenger {metric}={mine:.4f} vs champion v{champion_version} {metric}={theirs:.4f} "
        f"(margin {config.margin:g}, needs >= {needed:.4f})"
    )
    if mine >= needed:
        return _winner(config, f"wins: {comparison}", mine, theirs)
    return GateVerdict(Decision.REJECT, f"refused: {comparison}", mine, theirs)


def _winner(config: GateConfig, reason: str, mine: float, theirs: float | None) -> GateVerdict:
    if config.manual_approval:
        return GateVerdict(Decision.PENDING_APPROVAL, f"{reason}; waiting for manual approval", mine, theirs)
    return GateVerdict(Decision.PROMOTE, reason, mine, theirs)
