"""The feature source over the shared offline store (``driftline.featurestore.offline``).

The offline store's point-in-time join gives each labelled event the features its entity had
as of that event (the event itself included), exactly what the online store held then. A label
whose entity has no feature row at or before it is MISSING; the store fills defaults for those,
but a model should not learn from invented rows, so they come back as NaN and the dataset
builder leaves them out (and counts them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from driftline.featurestore.offline import FEATURE_STATUS, OfflineStore, training_set_hash
from driftline.featurestore.vectors import StalenessPolicy


class OfflineFeatureSource:
    """``FeatureSource`` backed by an ``OfflineStore``."""

    def __init__(self, store: OfflineStore, *, policy: StalenessPolicy = StalenessPolicy.SERVE) -> None:
        self._store = store
        self._policy = policy

    @property
    def store(self) -> OfflineStore:
        return self._store

    @property
    def feature_set(self) -> str:
        return self._store.feature_set.name

    @property
    def feature_set_version(self) -> int:
        return self._store.feature_set.version

    @property
    def feature_names(self) -> Sequence[str]:
        return self._store.feature_set.feature_names

    def join(self, labels: pd.DataFrame) -> pd.DataFrame:
        joined = self._store.build_training_set(labels, policy=self._policy)
        missing = (joined[FEATURE_STATUS] == "missing").to_numpy()
        if missing.any():
            joined.loc[missing, list(self.feature_names)] = np.nan
        return joined

    def content_hash(self, frame: pd.DataFrame) -> str:
        return training_set_hash(frame)
