"""The compiled data plane's challenger against the real broker and Redis: the canary share of
entities, chosen by the Python service's own hash (``models.canary_bucket``), served by the
challenger; shadow scoring logged and never returned; a challenger taken out again; the
champion never."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from driftline.inference.v1 import inference_pb2 as ipb
from driftline.kit.testing import consume
from driftline.kserve.v2 import grpc_predict_v2_pb2 as v2
from driftline.services.inference.models import Role, canary_bucket

from .planes import Plane, row

pytestmark = pytest.mark.integration


def logged(plane: Plane, expected: int) -> list[ipb.PredictionLog]:
    assert plane.process.stop() == 0  # SIGTERM: drains calls and shadows, flushes the log
    records = consume(plane.kafka, plane.predictions.name, expected=expected)
    return [ipb.PredictionLog.FromString(m.value()) for m in records]


async def test_the_canary_share_is_served_by_the_challenger_sticky_per_entity(
    start_plane: Callable[..., Plane],
) -> None:
    plane = start_plane(canary_share=0.5, load=3)
    entities = [await plane.put(row(i)) for i in range(8)]
    canary = {e for e in entities if canary_bucket("fraud", e) < 0.5}
    assert 0 < len(canary) < len(entities), "the test's entities must fall on both sides"
    request = ipb.PredictBatchRequest(requests=[ipb.PredictRequest(entity_id=e) for e in entities])

    # No challenger yet: the champion serves everyone.
    before = await plane.stub.PredictBatch(request)
    assert {(p.served_by, p.model_version) for p in before.predictions} == {("champion", 3)}

    plane.load(5, role=Role.CHALLENGER)
    rows = [row(i) for i in range(8)]
    on_champion, on_challenger = plane.scores(rows, version=3), plane.scores(rows, version=5)
    for _ in range(2):  # sticky: the same entities on the same side, call after call
        reply = await plane.stub.PredictBatch(request)
        assert [p.entity_id for p in reply.predictions] == entities
        for i, p in enumerate(reply.predictions):
            if p.entity_id in canary:
                assert (p.served_by, p.model_version) == ("challenger", 5)
                assert p.score == pytest.approx(on_challenger[i], abs=1e-6)
            else:
                assert (p.served_by, p.model_version) == ("champion", 3)
                assert p.score == pytest.approx(on_champion[i], abs=1e-6)
    single = await plane.stub.Predict(ipb.PredictRequest(entity_id=sorted(canary)[0]))
    assert single.prediction.served_by == "challenger"

    assert plane.process.remove_model(Role.CHALLENGER) == 5
    after = await plane.stub.PredictBatch(request)
    assert {(p.served_by, p.model_version) for p in after.predictions} == {("champion", 3)}
    # The champion is never taken out.
    with pytest.raises(grpc.RpcError) as refused:
        plane.process.remove_model(Role.CHAMPION)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]

    records = logged(plane, expected=8 * 4 + 1)
    roles = sorted((r.role, r.model_version) for r in records)
    assert roles.count(("challenger", 5)) == 2 * len(canary) + 1
    assert roles.count(("champion", 3)) == 8 * 4 - 2 * len(canary)


async def test_shadow_scores_the_challenger_logs_it_and_returns_only_the_champion(
    start_plane: Callable[..., Plane],
) -> None:
    plane = start_plane(shadow=True, load=3)
    plane.load(5, role=Role.CHALLENGER)
    entities = [await plane.put(row(i), age_s=1.0) for i in range(3)]
    reply = await plane.stub.PredictBatch(
        ipb.PredictBatchRequest(
            requests=[ipb.PredictRequest(entity_id=e, event_id=f"ev-{e}") for e in entities]
        )
    )
    assert {(p.served_by, p.model_version) for p in reply.predictions} == {("champion", 3)}
    # KServe sees both live versions; a version can be asked for by number.
    meta = await plane.kserve.ModelMetadata(v2.ModelMetadataRequest(name="fraud"))
    assert list(meta.versions) == ["3", "5"]
    assert (await plane.kserve.ModelReady(v2.ModelReadyRequest(name="fraud", version="5"))).ready

    records = logged(plane, expected=6)
    shadows = {r.entity_id: r for r in records if r.role == "shadow"}
    served = {r.entity_id: r for r in records if r.role == "champion"}
    assert set(shadows) == set(served) == set(entities)
    want = plane.scores([row(i) for i in range(3)], version=5)
    for i, entity in enumerate(entities):
        shadow = shadows[entity]
        assert shadow.model_version == 5
        assert shadow.score == pytest.approx(want[i], abs=1e-6)
        assert shadow.event_id == f"ev-{entity}"
        assert shadow.prediction_id != served[entity].prediction_id
        assert list(shadow.feature_values) == row(i)
