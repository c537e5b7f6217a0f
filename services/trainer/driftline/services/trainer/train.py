"""Training: a LightGBM binary classifier, deterministic given its parameters and seed.

LightGBM is chosen over scikit-learn's HistGradientBoosting because onnxmltools converts it to a
single ``TreeEnsembleClassifier`` node (standard ``ai.onnx.ml`` domain, no custom ops) whose
scores match the native model to ~1e-7, and because ``deterministic=True`` with row-wise
histograms and one thread gives bit-identical models for identical inputs, which
``driftline train --reproduce`` relies on.
"""

from __future__ import annotations

import dataclasses
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


def train_model(features: np.ndarray, labels: np.ndarray, params: TrainParams) -> lgb.LGBMClassifier:
    """Fit a binary classifier on float32-representable features (see ``as_model_input``)."""
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
    return model


def as_model_input(features: np.ndarray) -> np.ndarray:
    """Round features through float32, the ONNX input type, so native and ONNX see equal values."""
    return np.ascontiguousarray(features, dtype=np.float32).astype(np.float64)


def predict_native(model: lgb.LGBMClassifier, features: np.ndarray) -> np.ndarray:
    """Probability of class 1 from the native model."""
    return np.asarray(model.predict_proba(as_model_input(features))[:, 1], dtype=np.float64)
