from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from driftline.features.v1 import features_pb2
from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.offline import OfflineStore
from driftline.kit.codec import to_timestamp
from driftline.services.features import sink
from driftline.services.features.agents import VectorsSinkAgent
from driftline.services.features.sink import Malformed, OfflineSink

MALFORMED = "driftline_features_offline_vectors_malformed_total"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeMessage:
    value: bytes | None
    topic: str = "features.vectors.v1"
    partition: int = 2
    offset: int = 0


@dataclass
class FakeEvent:
    message: FakeMessage


def vector(event_id: str, *, feature_set: str = TRANSACTION_FEATURES.name) -> bytes:
    return features_pb2.FeatureVector(
        entity_id="c1",
        feature_set=feature_set,
        feature_set_version=TRANSACTION_FEATURES.version,
        values=[features_pb2.FeatureValue(name=n, value=1.0) for n in TRANSACTION_FEATURES.feature_names],
        event_time=to_timestamp(T0),
        event_id=event_id,
    ).SerializeToString()


def malformed_count() -> float:
    return REGISTRY.get_sample_value(MALFORMED) or 0.0


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Any:
    with structlog.testing.capture_logs() as captured:
        # A fresh logger: the module's may have cached another test's configuration.
        monkeypatch.setattr(sink, "log", structlog.get_logger(sink.__name__))
        yield captured


async def test_a_malformed_vector_is_counted_logged_and_acked_while_good_rows_are_written(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    store = OfflineStore(tmp_path, TRANSACTION_FEATURES)
    agent = VectorsSinkAgent(OfflineSink(store))
    batch = [
        FakeEvent(FakeMessage(vector("e1"), offset=10)),
        FakeEvent(FakeMessage(b"\xffnot protobuf", offset=11)),
        FakeEvent(FakeMessage(vector("e2"), offset=12)),
    ]
    before = malformed_count()

    done = await agent.handle(batch)  # type: ignore[arg-type]

    assert done == batch  # the malformed one too: a replay would not mend it
    assert sorted(store.read()["event_id"]) == ["e1", "e2"]
    assert malformed_count() == before + 1
    (warning,) = [e for e in logs if e["event"] == "offline_vectors_malformed"]
    assert warning["log_level"] == "warning"
    assert (warning["topic"], warning["partition"], warning["offset"], warning["count"]) == (
        "features.vectors.v1",
        2,
        11,
        1,
    )
    assert "not a valid driftline.features.v1.FeatureVector" in warning["error"]


async def test_vectors_of_another_feature_set_are_skipped_without_being_counted(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    store = OfflineStore(tmp_path, TRANSACTION_FEATURES)
    agent = VectorsSinkAgent(OfflineSink(store))
    batch = [FakeEvent(FakeMessage(vector("e1", feature_set="other"), offset=1))]
    before = malformed_count()

    assert await agent.handle(batch) == batch  # type: ignore[arg-type]

    assert malformed_count() == before
    assert not [e for e in logs if e["event"] == "offline_vectors_malformed"]


def test_malformed_warnings_are_rate_limited_but_every_one_is_counted(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    offline = OfflineSink(OfflineStore(tmp_path, TRANSACTION_FEATURES), log_every_s=3600)
    before = malformed_count()

    for offset in range(3):
        offline.add_many([(offset, Malformed("features.vectors.v1", 0, offset, "no value"))])

    assert malformed_count() == before + 3
    warnings = [e for e in logs if e["event"] == "offline_vectors_malformed"]
    assert [(w["offset"], w["count"]) for w in warnings] == [(0, 1)]
    assert offline.flush() == [0, 1, 2]
