"""Shared fixtures: a synthetic labelled world whose fraud rule can change (concept drift)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.services.trainer.dataset import DatasetBuilder
from driftline.services.trainer.fakes import FrameFeatureSource, InMemoryRegistry
from driftline.services.trainer.labels import LabelLog, LabelRecord

FEATURES = ["f0", "f1", "f2", "f3"]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class World:
    """Feature rows and labels of a synthetic stream; ``rule`` picks the column that means fraud."""

    log: LabelLog
    rows: list[dict[str, object]]

    def add(
        self, n: int, *, start_s: float, rule: int, seed: int, ingested_at: datetime | None = None
    ) -> None:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, len(FEATURES)))
        y = (x[:, rule] + 0.3 * rng.normal(size=n) > 0.8).astype(int)
        self.add_rows(x, y, start_s=start_s, name=str(seed), ingested_at=ingested_at)

    def add_rows(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        start_s: float,
        name: str,
        ingested_at: datetime | None = None,
    ) -> None:
        """Rows with the given features and labels, one second apart from ``start_s``."""
        records = []
        for i in range(len(x)):
            when = T0 + timedelta(seconds=start_s + i)
            entity = f"card-{i % 17}"
            event_id = f"ev-{name}-{i}"
            self.rows.append(
                {"entity_id": entity, "event_time": when, **dict(zip(FEATURES, x[i], strict=True))}
            )
            records.append(LabelRecord(entity, event_id, int(y[i]), when, when + timedelta(seconds=5)))
        self.log.append(records, ingested_at=ingested_at)

    def source(self) -> FrameFeatureSource:
        frame = pd.DataFrame(self.rows, columns=["entity_id", "event_time", *FEATURES])
        frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
        return FrameFeatureSource(frame, FEATURES)

    def builder(self, *, horizon_s: float = 10_000, min_rows: int = 100) -> DatasetBuilder:
        return DatasetBuilder(
            self.log, self.source(), horizon=timedelta(seconds=horizon_s), min_rows=min_rows
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(LabelLog(tmp_path / "labels"), [])


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def make_world(tmp_path: Path) -> Callable[[str], World]:
    def make(name: str) -> World:
        return World(LabelLog(tmp_path / name), [])

    return make
