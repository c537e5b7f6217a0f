"""Training: a LightGBM binary classifier, deterministic given its parameters and seed.

LightGBM is chosen over scikit-learn's HistGradientBoosting because onnxmltools converts it to a
single ``TreeEnsembleClassifier`` node (standard ``ai.onnx.ml`` domain, no custom ops), and
because ``deterministic=True`` with row-wise histograms and one thread gives bit-identical
models for identical inputs, which ``driftline train --reproduce`` relies on.

ONNX parity needs one more step. LightGBM splits on ``x <= t`` with a float64 threshold ``t``
(the midpoint between two training values); the ONNX tree ensemble stores ``t`` as float32,
rounded to nearest. When ``t`` rounds *up* onto a value that occurs in the data, that value goes
left in ONNX and right natively: a whole tree flips and scores differ by up to ~0.4 (seen on the
simulator's data). The model only ever sees float32 inputs (the ONNX input type; training data
is rounded through float32 too), and for a float32 ``x``, ``x <= t`` holds exactly when
``x <= floor32(t)``, the largest float32 not above ``t``. So every numerical threshold is
replaced by ``floor32(t)``: the native model's decisions are unchanged, and the ONNX float32
threshold is now exactly the same number.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from driftline.services.trainer.errors import InsufficientData

#: Prefix of the hyper-parameters in a registered version's params map.
PARAM_PREFIX = "lgbm."


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of one training; recorded with the version so it can be reproduced."""

    n_estimators: int = 100
    num_leaves: int = 15
    learning_rate: float = 0.1
    min_child_samples: int = 20
    reg_lambda: float = 0.0
    seed: int = 7

    def to_params(self) -> dict[str, str]:
        """The parameters as registry ``params`` entries."""
        return {f"{PARAM_PREFIX}{k}": repr(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TrainParams:
        """Read the parameters back from a registered version's ``params`` (missing ones default)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = params.get(f"{PARAM_PREFIX}{f.name}")
            if raw is not None:
                values[f.name] = int(raw) if f.type in ("int", int) else float(raw)
        return cls(**values)


def train_model(features: np.ndarray, labels: np.ndarray, params: TrainParams) -> lgb.Booster:
    """Fit a binary classifier on float32-representable features; thresholds snapped to float32."""
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not line up")
    classes = np.unique(labels)
    if len(classes) != 2:
        raise InsufficientData(f"training labels hold classes {classes.tolist()}; need both 0 and 1")
    model = lgb.LGBMClassifier(
        objective="binary",
        n_estimators=params.n_estimators,
        num_leaves=params.num_leaves,
        learning_rate=params.learning_rate,
        min_child_samples=params.min_child_samples,
        reg_lambda=params.reg_lambda,
        random_state=params.seed,
        # Bit-for-bit reproducible: fixed seeds, row-wise histograms, one thread.
        deterministic=True,
        force_row_wise=True,
        n_jobs=1,
        verbose=-1,
    )
    model.fit(as_model_input(features), labels.astype(np.int32))
    return lgb.Booster(model_str=snap_thresholds(model.booster_.model_to_string()))


_TREE_FIELD = re.compile(r"^(threshold|decision_type)=(.*)$", re.MULTILINE)
_TREE_SIZES = re.compile(r"^tree_sizes=.*\n", re.MULTILINE)


def snap_thresholds(model_text: str) -> str:
    """The model with every numerical split threshold ``t`` replaced by ``floor32(t)``."""
    out: list[str] = []
    position = 0
    decision_types: list[int] | None = None
    pending: tuple[int, int, list[float]] | None = None
    for match in _TREE_FIELD.finditer(model_text):
        field, values = match.group(1), match.group(2).split()
        if field == "threshold":
            pending = (match.start(2), match.end(2), [float(v) for v in values])
        else:
            decision_types = [int(v) for v in values]
        if pending is not None and decision_types is not None:
            start, end, thresholds = pending
            if len(thresholds) != len(decision_types):
                raise ValueError("tree has mismatched threshold and decision_type counts")
            snapped = [
                t if kind & 1 else _floor32(t)  # bit 0 set: categorical split, left alone
                for t, kind in zip(thresholds, decision_types, strict=True)
            ]
            out.append(model_text[position:start])
            out.append(" ".join(repr(v) for v in snapped))
            position = end
            pending, decision_types = None, None
    out.append(model_text[position:])
    # tree_sizes gives each tree's byte length for parallel parsing; the new text has other
    # lengths, and without the line LightGBM parses the trees one after another.
    return _TREE_SIZES.sub("", "".join(out), count=1)


def _floor32(t: float) -> float:
    nearest = np.float32(t)
    if float(nearest) > t:
        nearest = np.nextafter(nearest, np.float32(-np.inf))
    return float(nearest)


def as_model_input(features: np.ndarray) -> np.ndarray:
    """Round features through float32, the ONNX input type, so native and ONNX see equal values."""
    return np.ascontiguousarray(features, dtype=np.float32).astype(np.float64)


def predict_native(model: lgb.Booster, features: np.ndarray) -> np.ndarray:
    """Probability of class 1 from the native model."""
    return np.asarray(model.predict(as_model_input(features)), dtype=np.float64)
