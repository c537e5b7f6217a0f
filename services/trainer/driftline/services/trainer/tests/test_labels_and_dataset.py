from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from driftline.services.trainer.dataset import DatasetBuilder
from driftline.services.trainer.errors import InsufficientData
from driftline.services.trainer.fakes import FrameFeatureSource
from driftline.services.trainer.labels import LabelLog, LabelRecord

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def label(
    event: str, t: float, y: int, *, entity: str = "card-1", label_t: float | None = None
) -> LabelRecord:
    return LabelRecord(entity, event, y, at(t), at(label_t if label_t is not None else t + 5), f"fb-{event}")


def test_label_log_deduplicates_replays_and_keeps_the_latest_label(tmp_path) -> None:
    log = LabelLog(tmp_path)
    log.append([label("e1", 1, 0), label("e2", 2, 1)], ingested_at=at(100))
    log.append([label("e1", 1, 0), label("e2", 2, 1)], ingested_at=at(101))  # a replay
    log.append([label("e1", 1, 1, label_t=50)], ingested_at=at(102))  # a correction, later
    frame = log.read()
    assert frame["event_id"].tolist() == ["e1", "e2"]
    assert frame["label"].tolist() == [1, 1]


def test_labels_ingested_after_the_cutoff_are_not_read(tmp_path) -> None:
    log = LabelLog(tmp_path)
    log.append([label("e1", 1, 0)], ingested_at=at(100))
    log.append([label("e0", 0, 1)], ingested_at=at(200))  # a late label for an older event
    assert log.read(ingested_until=at(150))["event_id"].tolist() == ["e1"]
    assert log.read(ingested_until=at(200))["event_id"].tolist() == ["e0", "e1"]


def test_label_log_refuses_labels_other_than_zero_and_one(tmp_path) -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        LabelLog(tmp_path).append([label("e1", 1, 2)])


def feature_rows(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["entity_id", "t", "f0"])
    frame["event_time"] = [at(t) for t in frame["t"]]
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame.drop(columns="t")


def test_training_rows_get_feature_values_as_of_their_event_never_later(tmp_path) -> None:
    log = LabelLog(tmp_path)
    log.append(
        [label("e1", 10, 1), label("e2", 25, 0), label("e3", 25, 1, entity="card-2")], ingested_at=at(99)
    )
    features = feature_rows(
        [
            ("card-1", 5, 1.0),
            ("card-1", 10, 2.0),  # the labelled event's own row
            ("card-1", 11, 999.0),  # after e1: must not leak into it
            ("card-1", 20, 3.0),
            ("card-1", 30, 999.0),  # after e2
            ("card-2", 1, 7.0),
            ("card-2", 26, 999.0),
        ]
    )
    builder = DatasetBuilder(
        log, FrameFeatureSource(features, ["f0"]), horizon=timedelta(hours=1), min_rows=1
    )
    ts = builder.build(at(0), at(60), at(99))
    assert ts.frame[["event_id", "f0"]].values.tolist() == [["e1", 2.0], ["e2", 3.0], ["e3", 7.0]]


def test_labelled_events_without_features_are_dropped_and_counted(tmp_path) -> None:
    log = LabelLog(tmp_path)
    log.append([label("e1", 10, 1), label("e2", 20, 0, entity="card-9")], ingested_at=at(99))
    builder = DatasetBuilder(
        log,
        FrameFeatureSource(feature_rows([("card-1", 9, 1.0)]), ["f0"]),
        horizon=timedelta(hours=1),
        min_rows=1,
    )
    ts = builder.build(at(0), at(60), at(99))
    assert ts.frame["event_id"].tolist() == ["e1"]
    assert ts.dropped_rows == 1


def test_recent_set_spans_the_horizon_up_to_the_newest_labelled_event(world) -> None:
    world.add(300, start_s=0, rule=0, seed=1, ingested_at=at(10_000))
    builder = world.builder(horizon_s=199, min_rows=10)
    ts = builder.build_recent(now=at(20_000))
    assert ts.data_end == at(299)
    assert ts.data_start == at(100)
    assert len(ts) == 200
    assert ts.frame["event_time"].is_monotonic_increasing


def test_rebuilding_from_the_recorded_range_and_cutoff_gives_the_same_hash(world) -> None:
    world.add(300, start_s=0, rule=0, seed=1, ingested_at=at(10_000))
    builder = world.builder(horizon_s=150, min_rows=10)
    first = builder.build_recent(now=at(10_000))
    # Labels that arrive after the set was built (late ones for the same range, newer ones) do not change it.
    world.add(50, start_s=200.5, rule=0, seed=2, ingested_at=at(10_001))
    again = world.builder(horizon_s=150, min_rows=10).build(
        first.data_start, first.data_end, first.labels_ingested_until
    )
    assert again.content_hash == first.content_hash
    pd.testing.assert_frame_equal(again.frame, first.frame)
    grown = world.builder(horizon_s=150, min_rows=10).build(first.data_start, first.data_end, at(10_001))
    assert grown.content_hash != first.content_hash


def test_holdout_is_the_most_recent_rows(world) -> None:
    world.add(200, start_s=0, rule=0, seed=1)
    ts = world.builder(min_rows=10).build_recent()
    train, holdout = ts.split(0.25)
    assert len(holdout) == 50
    assert len(train) == 150
    times = ts.frame["event_time"]
    assert times.iloc[train].max() <= times.iloc[holdout].min()


def test_too_few_labels_is_insufficient_data(world) -> None:
    world.add(20, start_s=0, rule=0, seed=1)
    with pytest.raises(InsufficientData, match="need at least 100"):
        world.builder(min_rows=100).build_recent()


def test_empty_label_log_is_insufficient_data(world) -> None:
    with pytest.raises(InsufficientData, match="no labels"):
        world.builder().build_recent()
