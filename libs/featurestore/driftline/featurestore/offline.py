"""The offline store: append-only Parquet, partitioned by date, and point-in-time training sets.

Layout: ``root/feature_set=NAME.vVERSION/date=YYYY-MM-DD/part-<write ns>-<random>.parquet``. A
row is one entity's feature values as of one event (what the stream computed after that event):
``entity_id, event_id, event_time`` (UTC, microseconds) and one float64 column per feature.
Files are written to a temporary name and renamed, so readers never see half a file; nothing is
rewritten. At-least-once delivery can append the same event twice: readers keep the last write.

:func:`point_in_time_join` answers, for each label ``(entity_id, event_time)``, with the row of
the entity's newest event at or before that instant (the labelled event itself included), never
a later one: exactly what the online store held at that instant, hence no training/serving skew.
Freshness is judged as on read: values older than their ttl at the label time are STALE.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftline.featurestore.aggregation import Computed, replay
from driftline.featurestore.definitions import TRANSACTION_FEATURES, FeatureSet
from driftline.featurestore.events import Event
from driftline.featurestore.vectors import FeaturesUnavailable, StalenessPolicy
from driftline.kit.errors import InvalidArgument

KEY_COLUMNS = ("entity_id", "event_id", "event_time")
#: Columns the training-set builder adds after the label columns and the features.
FEATURE_EVENT_TIME = "feature_event_time"
FEATURE_EVENT_ID = "feature_event_id"
FEATURE_AGE = "feature_age_seconds"
FEATURE_STATUS = "feature_status"


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One entity's feature values as of one event. ``event_time``: epoch seconds."""

    entity_id: str
    event_id: str
    event_time: float
    values: Sequence[float]

    @classmethod
    def from_computed(cls, entity_id: str, computed: Computed) -> FeatureRow:
        return cls(entity_id, computed.event_id, computed.event_time, computed.values)


def arrow_schema(feature_set: FeatureSet) -> pa.Schema:
    return pa.schema(
        [
            pa.field("entity_id", pa.string(), nullable=False),
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
        + [pa.field(name, pa.float64(), nullable=False) for name in feature_set.feature_names]
    )


def rows_frame(feature_set: FeatureSet, rows: Iterable[FeatureRow]) -> pd.DataFrame:
    """Feature rows as a data frame with the store's schema."""
    rows = list(rows)
    names = feature_set.feature_names
    values = np.array([r.values for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    micros = np.array([round(r.event_time * 1_000_000) for r in rows], dtype=np.int64)
    frame = pd.DataFrame(
        {
            "entity_id": pd.Series([r.entity_id for r in rows], dtype=object),
            "event_id": pd.Series([r.event_id for r in rows], dtype=object),
            "event_time": pd.to_datetime(micros, unit="us", utc=True),
        }
    )
    for i, name in enumerate(names):
        frame[name] = values[:, i]
    return frame


def materialize(feature_set: FeatureSet, events: Iterable[Event]) -> pd.DataFrame:
    """Feature rows for every event, computed by replaying the aggregation engine (backfills)."""
    return rows_frame(
        feature_set, (FeatureRow.from_computed(e.entity_id, c) for e, c in replay(feature_set, events))
    )


class OfflineStore:
    """Append-only, date-partitioned Parquet store of one feature set's rows."""

    def __init__(self, root: str | Path, feature_set: FeatureSet = TRANSACTION_FEATURES) -> None:
        self.feature_set = feature_set
        self.root = Path(root)
        self.path = self.root / f"feature_set={feature_set.key}"
        self._schema = arrow_schema(feature_set)

    def append(self, rows: pd.DataFrame | Iterable[FeatureRow]) -> list[Path]:
        """Append rows (a frame with the store's columns, or FeatureRows); returns the files written."""
        frame = rows if isinstance(rows, pd.DataFrame) else rows_frame(self.feature_set, rows)
        if frame.empty:
            return []
        missing = [c for c in (*KEY_COLUMNS, *self.feature_set.feature_names) if c not in frame.columns]
        if missing:
            raise InvalidArgument(f"rows lack columns {missing}", code="missing_columns")
        frame = frame.loc[:, [*KEY_COLUMNS, *self.feature_set.feature_names]].copy()
        frame["event_time"] = _utc_micros(frame["event_time"])
        values = frame[self.feature_set.feature_names].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise InvalidArgument("feature rows contain NaN or infinite values", code="not_finite")
        written = []
        days = frame["event_time"].dt.strftime("%Y-%m-%d")
        for day, part in frame.groupby(days, sort=True):
            table = pa.Table.from_pandas(part, schema=self._schema, preserve_index=False)
            folder = self.path / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            temporary = folder / f".{target.name}.tmp"
            try:
                pq.write_table(table, temporary)
                os.replace(temporary, target)
            except BaseException:
                temporary.unlink(missing_ok=True)  # a full disk must not also leave half a file
                raise
            written.append(target)
        return written

    def remove_stale_temporaries(self, older_than_s: float = 3600.0) -> list[Path]:
        """Delete the temporary files of writes that never finished (a process killed mid-write)
        and were last touched more than ``older_than_s`` ago; returns them. Readers never see
        them, but they hold disk. The age spares writes in flight in other processes."""
        if not self.path.exists():
            return []
        cutoff = time.time() - older_than_s
        removed = []
        for temporary in self.path.glob("date=*/.part-*.tmp"):
            try:
                if temporary.stat().st_mtime < cutoff:
                    temporary.unlink()
                    removed.append(temporary)
            except OSError:  # finished or removed meanwhile, or not ours to delete: housekeeping never fails
                continue
        return removed

    def files(self, start: date | None = None, end: date | None = None) -> list[Path]:
        """Part files with event dates in ``[start, end]``, in write order within each date."""
        if not self.path.exists():
            return []
        found = []
        for folder in sorted(self.path.glob("date=*")):
            day = date.fromisoformat(folder.name.removeprefix("date="))
            if (start is None or day >= start) and (end is None or day <= end):
                found += sorted(folder.glob("part-*.parquet"))
        return found

    def read(self, start: date | None = None, end: date | None = None) -> pd.DataFrame:
        """Every row (one per entity and event: the last written wins), sorted by time, entity, id."""
        files = self.files(start, end)
        if not files:
            return self._schema.empty_table().to_pandas()
        # Write order: files sorted by name (write time) across dates.
        files.sort(key=lambda p: p.name)
        frame = pa.concat_tables([pq.read_table(p, schema=self._schema) for p in files]).to_pandas()
        frame = frame.drop_duplicates(subset=["entity_id", "event_id"], keep="last")
        return frame.sort_values(["event_time", "entity_id", "event_id"], kind="stable").reset_index(
            drop=True
        )

    def build_training_set(
        self, labels: pd.DataFrame, *, policy: StalenessPolicy = StalenessPolicy.SERVE
    ) -> pd.DataFrame:
        """Point-in-time-correct features for each label row; see :func:`point_in_time_join`."""
        # Every date up to the last label's: a row of any age may be the newest before a label.
        end = _utc_micros(labels["event_time"]).max().date() if len(labels) else None
        return point_in_time_join(self.read(None, end), labels, self.feature_set, policy=policy)


def _utc_micros(series: pd.Series) -> pd.Series:
    """Timezone-aware UTC, microsecond precision; numbers are epoch seconds."""
    if pd.api.types.is_numeric_dtype(series):
        micros = np.round(series.to_numpy(dtype=np.float64) * 1_000_000).astype(np.int64)
        return pd.Series(pd.to_datetime(micros, unit="us", utc=True), index=series.index)
    converted = pd.to_datetime(series, utc=True)
    return converted.dt.as_unit("us")


def point_in_time_join(
    rows: pd.DataFrame,
    labels: pd.DataFrame,
    feature_set: FeatureSet = TRANSACTION_FEATURES,
    *,
    policy: StalenessPolicy = StalenessPolicy.SERVE,
) -> pd.DataFrame:
    """Each label row (``entity_id``, ``event_time``, anything else) with its features as of then.

    For each label, the feature row of the same entity with the newest ``event_time <= label
    event_time`` (ties: the row with the largest event id, which includes every event at that
    instant). No row: MISSING, feature defaults. A value older than its ttl at the label time:
    STALE; kept under SERVE, replaced by the default under DEFAULT. FAIL raises if any label
    lacks fresh features. Adds ``feature_event_time``, ``feature_event_id``,
    ``feature_age_seconds`` (NaN when missing) and ``feature_status`` (ok, stale, missing).
    Output rows are in the labels' order, with a fresh index.
    """
    names = feature_set.feature_names
    for column in ("entity_id", "event_time"):
        if column not in labels.columns:
            raise InvalidArgument(f"labels lack column {column!r}", code="missing_columns")
    clash = [
        c for c in (*names, FEATURE_EVENT_TIME, FEATURE_EVENT_ID, FEATURE_AGE, FEATURE_STATUS) if c in labels
    ]
    if clash:
        raise InvalidArgument(f"label columns clash with feature columns: {clash}", code="column_clash")

    left = labels.reset_index(drop=True).copy()
    left["__order"] = np.arange(len(left))
    left["__t"] = _utc_micros(left["event_time"]).astype("int64")
    left["entity_id"] = left["entity_id"].astype(str)

    right = rows.loc[:, [*KEY_COLUMNS, *names]].copy()
    right["__t"] = _utc_micros(right["event_time"]).astype("int64")
    right = right.rename(columns={"event_time": FEATURE_EVENT_TIME, "event_id": FEATURE_EVENT_ID})
    right["entity_id"] = right["entity_id"].astype(str)
    right = right.sort_values(["__t", FEATURE_EVENT_ID], kind="stable")

    merged = pd.merge_asof(
        left.sort_values("__t", kind="stable"),
        right,
        on="__t",
        by="entity_id",
        direction="backward",
        allow_exact_matches=True,
    )
    merged = merged.sort_values("__order", kind="stable").reset_index(drop=True)

    present = merged[FEATURE_EVENT_ID].notna().to_numpy()
    label_t = merged["__t"].to_numpy(dtype=np.int64)
    feature_t = _utc_micros(merged[FEATURE_EVENT_TIME]).fillna(pd.Timestamp(0, tz="UTC")).astype("int64")
    age = np.where(present, (label_t - feature_t.to_numpy(dtype=np.int64)) / 1_000_000, np.nan)
    status = np.where(present, "ok", "missing").astype(object)
    for feature in feature_set.features:
        column = merged[feature.name].to_numpy(dtype=np.float64)
        stale = present & (age > feature.ttl_s)
        status[stale & (status == "ok")] = "stale"
        replace = ~present | (stale if policy is StalenessPolicy.DEFAULT else False)
        merged[feature.name] = np.where(replace, feature.default, column)
    merged[FEATURE_AGE] = age
    merged[FEATURE_STATUS] = status
    merged[FEATURE_EVENT_ID] = merged[FEATURE_EVENT_ID].where(present, None)

    if policy is StalenessPolicy.FAIL and (status != "ok").any():
        bad = merged.loc[status != "ok", "entity_id"].tolist()
        raise FeaturesUnavailable(f"{len(bad)} labels lack fresh features", entities=bad)
    out_columns = [c for c in labels.columns] + [
        *names,
        FEATURE_EVENT_TIME,
        FEATURE_EVENT_ID,
        FEATURE_AGE,
        FEATURE_STATUS,
    ]
    result = merged.loc[:, out_columns].copy()
    result[names] = result[names].astype(np.float64)
    return result


def build_training_set_from_events(
    feature_set: FeatureSet,
    events: Iterable[Event],
    labels: pd.DataFrame,
    *,
    policy: StalenessPolicy = StalenessPolicy.SERVE,
) -> pd.DataFrame:
    """Point-in-time training set straight from raw events (engine replay, then the join)."""
    return point_in_time_join(materialize(feature_set, events), labels, feature_set, policy=policy)


def training_set_hash(frame: pd.DataFrame) -> str:
    """Deterministic content hash of a data frame: columns, dtypes and values, in row order.

    The same training set gives the same hash in any process (lineage, reproducibility).
    """
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}\x1f{dtype}\x1e".encode())
    digest.update(str(len(frame)).encode())
    if len(frame):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
