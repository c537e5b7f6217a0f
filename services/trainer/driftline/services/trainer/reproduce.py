"""``driftline train --reproduce VERSION``: rebuild a version's training set and model from its lineage.

The lineage holds the event-time range and the content hash; the version's params hold the label
cutoff (``labels_ingested_until``), the holdout share and every hyper-parameter, seed included.
The rebuilt set must hash the same (else ``ReproductionMismatch``), and the retrained model's
scores must match the registered artifact's on every row of the set within the tolerance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from driftline.kit.codec import from_timestamp
from driftline.kit.errors import FailedPrecondition
from driftline.services.trainer.convert import OnnxScorer, max_abs_diff
from driftline.services.trainer.dataset import DatasetBuilder
from driftline.services.trainer.errors import ReproductionMismatch
from driftline.services.trainer.registry import Registry
from driftline.services.trainer.runner import P_HOLDOUT, P_LABELS_UNTIL, fit_challenger
from driftline.services.trainer.train import TrainParams


@dataclass(frozen=True)
class Reproduction:
    version: int
    data_hash: str
    rows: int
    max_abs_diff: float
    artifact_sha256: str
    registered_sha256: str

    @property
    def identical_artifact(self) -> bool:
        return self.artifact_sha256 == self.registered_sha256


def reproduce(
    registry: Registry,
    dataset: DatasetBuilder,
    model_name: str,
    version: int,
    *,
    tolerance: float = 1e-5,
) -> Reproduction:
    """Rebuild, retrain and compare; raises ``ReproductionMismatch`` when anything differs."""
    mv = registry.get_version(model_name, version=version)
    lineage = mv.lineage
    if not lineage.data_hash or P_LABELS_UNTIL not in mv.params:
        raise FailedPrecondition(f"{model_name} v{version} has no reproducible lineage (not trained here?)")
    features = dataset.features
    if (mv.feature_set, mv.feature_set_version) != (features.feature_set, features.feature_set_version):
        raise FailedPrecondition(
            f"v{version} used feature set {mv.feature_set} v{mv.feature_set_version}; this trainer has "
            f"{features.feature_set} v{features.feature_set_version}"
        )
    training_set = dataset.build(
        from_timestamp(lineage.data_start),
        from_timestamp(lineage.data_end),
        datetime.fromisoformat(mv.params[P_LABELS_UNTIL]),
    )
    if training_set.content_hash != lineage.data_hash:
        raise ReproductionMismatch(
            f"rebuilt training set hashes {training_set.content_hash}, lineage says {lineage.data_hash} "
            f"({len(training_set)} rows)"
        )
    challenger = fit_challenger(
        training_set,
        TrainParams.from_params(mv.params),
        holdout_fraction=float(mv.params.get(P_HOLDOUT, "0.25")),
        parity_tolerance=tolerance,
        reference_rows=0,
        choose_threshold=False,
    )
    registered = registry.fetch_artifact(model_name, version)
    x = training_set.features
    diff = max_abs_diff(OnnxScorer(challenger.artifact).predict(x), OnnxScorer(registered).predict(x))
    if not diff <= tolerance:
        raise ReproductionMismatch(f"retrained model's scores differ from v{version}'s by {diff:.3g}")
    return Reproduction(
        version=version,
        data_hash=training_set.content_hash,
        rows=len(training_set),
        max_abs_diff=float(np.float64(diff)),
        artifact_sha256=hashlib.sha256(challenger.artifact).hexdigest(),
        registered_sha256=hashlib.sha256(registered).hexdigest(),
    )
