from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.featurestore.aggregation import replay
from driftline.featurestore.offline import (
    FeatureRow,
    OfflineStore,
    build_training_set_from_events,
    materialize,
    point_in_time_join,
    training_set_hash,
)
from driftline.featurestore.testing import SMALL_SET, event
from driftline.featurestore.vectors import FeaturesUnavailable, StalenessPolicy
from driftline.kit.errors import InvalidArgument

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def rows_at(*times: float, entity: str = "c1") -> list[FeatureRow]:
    n = len(SMALL_SET.feature_names)
    return [FeatureRow(entity, f"{entity}-{t}", T0 + t, [float(t)] * n) for t in times]


def labels(*items: tuple[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity_id": [e for e, _ in items],
            "event_time": pd.to_datetime([round((T0 + t) * 1e6) for _, t in items], unit="us", utc=True),
            "label": [i % 2 for i in range(len(items))],
        }
    )


def test_append_writes_date_partitions_and_read_returns_rows(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, SMALL_SET)
    written = store.append(rows_at(0, 10, DAY))
    assert sorted(p.parent.name for p in written) == ["date=2023-11-14", "date=2023-11-15"]
    assert all(p.parent.parent.name == "feature_set=small.v1" for p in written)
    frame = store.read()
    assert list(frame["event_id"]) == ["c1-0", "c1-10", f"c1-{DAY}"]
    assert str(frame["event_time"].dtype) == "datetime64[us, UTC]"
    assert frame["sum_10s"].tolist() == [0.0, 10.0, DAY]


def test_appending_the_same_event_again_keeps_the_last_write(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, SMALL_SET)
    store.append(rows_at(5))
    n = len(SMALL_SET.feature_names)
    store.append([FeatureRow("c1", "c1-5", T0 + 5, [7.0] * n)])
    frame = store.read()
    assert len(frame) == 1
    assert frame["sum_10s"].iloc[0] == 7.0


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    import driftline.featurestore.offline as offline

    def disk_full(table, where):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    store = OfflineStore(tmp_path, SMALL_SET)
    monkeypatch.setattr(offline.pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.append(rows_at(0))
    assert [p.name for p in store.path.rglob("*") if p.is_file()] == []


def test_temporaries_of_unfinished_writes_are_removed_once_old(tmp_path: Path) -> None:
    import os
    import time

    store = OfflineStore(tmp_path, SMALL_SET)
    (kept,) = store.append(rows_at(0))
    old = kept.parent / ".part-1-dead.parquet.tmp"  # a writer killed mid-write, long ago
    recent = kept.parent / ".part-2-live.parquet.tmp"  # another process writing right now
    for path in (old, recent):
        path.write_bytes(b"PAR1")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_stale_temporaries(older_than_s=3600) == [old]
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([kept.name, recent.name])
    assert len(store.read()) == 1


def test_append_refuses_nan_values(tmp_path: Path) -> None:
    n = len(SMALL_SET.feature_names)
    with pytest.raises(InvalidArgument, match="NaN"):
        OfflineStore(tmp_path, SMALL_SET).append([FeatureRow("c1", "x", T0, [float("nan")] * n)])


def test_point_in_time_join_takes_newest_row_at_or_before_the_label_never_later(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, SMALL_SET)
    store.append(rows_at(0, 10, 20))
    store.append(rows_at(15, entity="c2"))
    result = store.build_training_set(
        labels(("c1", 10), ("c1", 9.999999), ("c1", 25), ("c2", 14), ("c1", -1))
    )
    assert result["feature_event_id"].tolist() == ["c1-10", "c1-0", "c1-20", None, None]
    assert result["sum_10s"].tolist() == [10.0, 0.0, 20.0, 0.0, 0.0]  # missing: defaults
    assert result["feature_status"].tolist() == ["ok", "ok", "ok", "missing", "missing"]
    assert result["feature_age_seconds"].iloc[0] == 0.0
    assert result["feature_age_seconds"].iloc[1] == pytest.approx(9.999999)
    assert list(result.columns[:3]) == ["entity_id", "event_time", "label"]


def test_point_in_time_join_never_reads_a_future_value_on_random_data() -> None:
    rng = np.random.default_rng(7)
    n = len(SMALL_SET.feature_names)
    times = np.sort(rng.uniform(0, 1000, 300))
    rows = [
        FeatureRow(f"c{i % 4}", f"r{i}", round(T0 + float(t), 6), [float(t)] * n) for i, t in enumerate(times)
    ]
    frame = point_in_time_join(
        _frame(rows),
        labels(*[(f"c{int(rng.integers(4))}", float(t)) for t in rng.uniform(-10, 1010, 500)]),
        SMALL_SET,
    )
    label_t = frame["event_time"]
    found = frame["feature_event_id"].notna()
    assert (frame.loc[found, "feature_event_time"] <= label_t[found]).all()
    # And it is the newest such row: no row of that entity lies between the feature row and the label.
    for _, row in frame[found].iterrows():
        later = [
            r
            for r in rows
            if r.entity_id == row.entity_id
            and row["feature_event_time"].timestamp() < r.event_time <= row["event_time"].timestamp()
        ]
        assert later == []


def _frame(rows: list[FeatureRow]) -> pd.DataFrame:
    from driftline.featurestore.offline import rows_frame

    return rows_frame(SMALL_SET, rows)


def test_stale_values_are_flagged_and_defaulted_under_the_default_policy() -> None:
    frame = _frame(rows_at(0))
    # last_amount has a 30 s ttl, the others 60 s: at +45 s only last_amount is stale.
    served = point_in_time_join(frame, labels(("c1", 45)), SMALL_SET)
    assert served["feature_status"].tolist() == ["stale"]
    assert served["last_amount"].iloc[0] == 0.0
    frame = _frame([FeatureRow("c1", "x", T0, [5.0] * len(SMALL_SET.feature_names))])
    served = point_in_time_join(frame, labels(("c1", 45)), SMALL_SET)
    defaulted = point_in_time_join(frame, labels(("c1", 45)), SMALL_SET, policy=StalenessPolicy.DEFAULT)
    assert served["last_amount"].iloc[0] == 5.0
    assert defaulted["last_amount"].iloc[0] == 0.0  # its default
    assert defaulted["sum_10s"].iloc[0] == 5.0  # not stale at 45 s
    with pytest.raises(FeaturesUnavailable):
        point_in_time_join(frame, labels(("c1", 45)), SMALL_SET, policy=StalenessPolicy.FAIL)


def test_training_set_from_events_equals_streamed_values_at_each_labelled_event() -> None:
    events = [event(f"e{i}", T0 + i * 3.7, float(i), f"m{i % 3}", entity=f"c{i % 2}") for i in range(40)]
    streamed = {e.event_id: c.values for e, c in replay(SMALL_SET, events)}
    label_frame = pd.DataFrame(
        {
            "entity_id": [e.entity_id for e in events],
            "event_time": pd.to_datetime([round(e.event_time * 1e6) for e in events], unit="us", utc=True),
            "event_id": [e.event_id for e in events],
        }
    )
    result = build_training_set_from_events(SMALL_SET, events, label_frame)
    for _, row in result.iterrows():
        assert tuple(row[SMALL_SET.feature_names]) == streamed[row["event_id"]]
        assert row["feature_event_id"] == row["event_id"]


def test_training_set_hash_is_deterministic_and_content_sensitive() -> None:
    events = [event(f"e{i}", T0 + i, float(i)) for i in range(10)]
    frame = materialize(SMALL_SET, events)
    assert training_set_hash(frame) == training_set_hash(materialize(SMALL_SET, list(reversed(events))))
    changed = frame.copy()
    changed.loc[3, "sum_10s"] += 1e-9
    assert training_set_hash(changed) != training_set_hash(frame)
    assert len(training_set_hash(frame)) == 64
