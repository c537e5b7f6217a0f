"""Point-in-time-correct training sets: labels from the label log, features from the offline store.

A training set is fully described by three instants, which a registered version's lineage and
params record (``data_start``, ``data_end``, ``labels_ingested_until``):

* the labels are the label log's rows ingested at or before ``labels_ingested_until``, whose
  event time lies in ``[data_start, data_end]``, de-duplicated (see ``labels.py``);
* each row's features are the offline store's values *as of that row's event* (the feature
  source's point-in-time join), never a later value;
* rows are ordered by (event_time, entity_id, event_id), and the set's content hash is computed
  over that canonical form, so a rebuild from the same lineage gives the same hash.

A recent set (what a retrain uses) ends at the newest labelled event known now and starts
``horizon_s`` before it. The holdout is the most recent ``holdout_fraction`` of the rows: the
challenger never trains on it, and the champion is scored on the very same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd

from driftline.kit.codec import utcnow
from driftline.services.trainer.errors import InsufficientData
from driftline.services.trainer.labels import LabelLog

#: Columns that identify and label a row; every other column of a training frame is a feature.
KEY_COLUMNS = ["entity_id", "event_id", "event_time", "label"]


class FeatureSource(Protocol):
    """Point-in-time feature lookup (the offline store) and the training-set content hash."""

    @property
    def feature_set(self) -> str:
        """Name of the feature set the features belong to."""

    @property
    def feature_set_version(self) -> int: ...

    @property
    def feature_names(self) -> Sequence[str]: ...

    def join(self, labels: pd.DataFrame) -> pd.DataFrame:
        """``labels`` (KEY_COLUMNS) with one column per feature, valued as of each row's event.

        Returns the same rows in the same order.
        """

    def content_hash(self, frame: pd.DataFrame) -> str:
        """sha256 (hex) of a training frame in canonical form."""


@dataclass(frozen=True)
class TrainingSet:
    """Rows in canonical order, with what it takes to rebuild them."""

    frame: pd.DataFrame
    feature_names: tuple[str, ...]
    data_start: datetime
    data_end: datetime
    labels_ingested_until: datetime
    content_hash: str
    #: Labelled events left out because the offline store had no features for them.
    dropped_rows: int = 0

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def features(self) -> np.ndarray:
        return self.frame[list(self.feature_names)].to_numpy(dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=np.int32)

    def split(self, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of the training part and of the holdout (the most recent rows)."""
        if not 0 < holdout_fraction < 1:
            raise ValueError("holdout_fraction must lie strictly between 0 and 1")
        n = len(self.frame)
        n_holdout = max(1, round(n * holdout_fraction))
        cut = n - n_holdout
        return np.arange(cut), np.arange(cut, n)


class DatasetBuilder:
    """Builds training sets from the label log and a feature source."""

    def __init__(
        self,
        labels: LabelLog,
        features: FeatureSource,
        *,
        horizon: timedelta,
        min_rows: int = 200,
    ) -> None:
        self._labels = labels
        self._features = features
        self._horizon = horizon
        self._min_rows = min_rows

    @property
    def features(self) -> FeatureSource:
        return self._features

    def build_recent(self, now: datetime | None = None) -> TrainingSet:
        """The set a retrain uses now: the ``horizon`` up to the newest labelled event."""
        cutoff = now or utcnow()
        known = self._labels.read(ingested_until=cutoff)
        if known.empty:
            raise InsufficientData("the label log holds no labels yet")
        data_end = known["event_time"].max().to_pydatetime()
        return self.build(data_end - self._horizon, data_end, cutoff)

    def build(self, data_start: datetime, data_end: datetime, labels_ingested_until: datetime) -> TrainingSet:
        """The set described by a lineage: rebuilt from it, it is the same set (same hash)."""
        labels = self._labels.read(
            ingested_until=labels_ingested_until, event_start=data_start, event_end=data_end
        )
        keys = labels[KEY_COLUMNS].reset_index(drop=True)
        names = list(self._features.feature_names)
        joined = self._features.join(keys) if len(keys) else keys.assign(**{n: np.nan for n in names})
        frame = joined[KEY_COLUMNS + names].reset_index(drop=True)
        if not frame[KEY_COLUMNS[:3]].equals(keys[KEY_COLUMNS[:3]]):
            raise RuntimeError("the feature source reordered or dropped rows")
        # A labelled event the offline store never saw (dropped as too late upstream, say) has
        # no features as of it: leave it out rather than invent values.
        complete = np.isfinite(frame[names].to_numpy(dtype=np.float64)).all(axis=1)
        dropped = int((~complete).sum())
        frame = frame[complete].reset_index(drop=True)
        if len(frame) < self._min_rows:
            raise InsufficientData(
                f"{len(frame)} labelled events with features between {data_start.isoformat()} and "
                f"{data_end.isoformat()} ({dropped} without features); need at least {self._min_rows}"
            )
        return TrainingSet(
            frame=frame,
            feature_names=tuple(names),
            data_start=data_start,
            data_end=data_end,
            labels_ingested_until=labels_ingested_until,
            content_hash=self._features.content_hash(frame),
            dropped_rows=dropped,
        )


def canonical_hash(frame: pd.DataFrame, feature_names: Sequence[str]) -> str:
    """sha256 of a training frame's canonical bytes: keys, label, then features as float64.

    Canonical means: rows in (event_time, entity_id, event_id) order, event time as integer
    microseconds, strings UTF-8 with a separator that cannot occur in them, numbers little-endian.
    """
    ordered = frame.sort_values(["event_time", "entity_id", "event_id"], kind="mergesort")
    digest = hashlib.sha256()
    digest.update(
        ("\x1f".join(["entity_id", "event_id", "event_time", "label", *feature_names]) + "\x1e").encode()
    )
    digest.update(("\x1f".join(ordered["entity_id"].astype(str)) + "\x1e").encode())
    digest.update(("\x1f".join(ordered["event_id"].astype(str)) + "\x1e").encode())
    micros = pd.to_datetime(ordered["event_time"], utc=True).dt.as_unit("us").astype("int64").to_numpy()
    digest.update(micros.astype("<i8").tobytes())
    digest.update(ordered["label"].to_numpy(dtype="<i8").tobytes())
    digest.update(ordered[list(feature_names)].to_numpy(dtype="<f8").tobytes())
    return digest.hexdigest()
