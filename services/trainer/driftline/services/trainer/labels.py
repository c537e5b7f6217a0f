"""The trainer's append-only label log: every label it has been told, in Parquet, never edited.

Labels arrive on the feedback topic at any time after their event. A training set must be
rebuildable later (``driftline train --reproduce``), so the trainer keeps its own copy rather
than asking another service for "the labels as of then": a consumer of the feedback topic
appends each batch as one immutable Parquet file under ``<data_dir>/labels/date=<ingest day>/``.

Each row records when the trainer received it (``ingested_at``). A training set reads the rows
ingested up to a cutoff instant and records that cutoff, so labels arriving later (late labels,
replays) never change a set that was already built. Replays and duplicates are harmless: rows
are de-duplicated by (entity_id, event_id) on read, keeping the latest label_time, then the
latest ingestion.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftline.kit.codec import utcnow

SCHEMA = pa.schema(
    [
        ("entity_id", pa.string()),
        ("event_id", pa.string()),
        ("label", pa.int8()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("label_time", pa.timestamp("us", tz="UTC")),
        ("feedback_id", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = [f.name for f in SCHEMA]


@dataclass(frozen=True)
class LabelRecord:
    """One ground-truth label for one event of one entity."""

    entity_id: str
    event_id: str
    label: int
    event_time: datetime
    label_time: datetime
    feedback_id: str = ""


class LabelLog:
    """Append-only Parquet label log under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def append(self, records: Sequence[LabelRecord], *, ingested_at: datetime | None = None) -> int:
        """Write the records as one new file; returns the number written."""
        if not records:
            return 0
        moment = ingested_at or utcnow()
        for r in records:
            if r.label not in (0, 1):
                raise ValueError(f"label must be 0 or 1, got {r.label}")
            if r.event_time.tzinfo is None or r.label_time.tzinfo is None:
                raise ValueError("label times must be timezone-aware")
        table = pa.table(
            {
                "entity_id": [r.entity_id for r in records],
                "event_id": [r.event_id for r in records],
                "label": [r.label for r in records],
                "event_time": [r.event_time for r in records],
                "label_time": [r.label_time for r in records],
                "feedback_id": [r.feedback_id for r in records],
                "ingested_at": [moment] * len(records),
            },
            schema=SCHEMA,
        )
        folder = self.root / f"date={moment:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{moment:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        # Readers never see a half-written file: the name appears only once it is complete.
        tmp.rename(folder / name)
        return len(records)

    def read(
        self,
        *,
        ingested_until: datetime | None = None,
        event_start: datetime | None = None,
        event_end: datetime | None = None,
    ) -> pd.DataFrame:
        """De-duplicated labels ingested at or before the cutoff, with event time in [start, end].

        Rows come back sorted by (event_time, entity_id, event_id), so equal inputs give equal
        frames.
        """
        files = sorted(self.root.glob("date=*/part-*.parquet"))
        if not files:
            return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in COLUMNS})
        frame = pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files]).to_pandas()
        if ingested_until is not None:
            frame = frame[frame["ingested_at"] <= pd.Timestamp(ingested_until)]
        if event_start is not None:
            frame = frame[frame["event_time"] >= pd.Timestamp(event_start)]
        if event_end is not None:
            frame = frame[frame["event_time"] <= pd.Timestamp(event_end)]
        frame = frame.sort_values(
            ["entity_id", "event_id", "label_time", "ingested_at", "feedback_id"], kind="mergesort"
        )
        frame = frame.drop_duplicates(["entity_id", "event_id"], keep="last")
        frame = frame.sort_values(["event_time", "entity_id", "event_id"], kind="mergesort")
        return frame.reset_index(drop=True)


def _dtype(column: str) -> str:
    if column in ("event_time", "label_time", "ingested_at"):
        return "datetime64[us, UTC]"
    return "int8" if column == "label" else "object"
