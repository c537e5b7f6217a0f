from __future__ import annotations

import asyncio
import uuid

import pytest

from driftline.featurestore.vectors import FeatureStatus, StalenessPolicy
from driftline.kit.errors import FailedPrecondition
from driftline.services.inference.batcher import BatchingOptions
from driftline.services.inference.errors import ModelNotReady, UnknownEntity, UnknownModel
from driftline.services.inference.models import ModelMeta, ModelSlots, Role, RoutingOptions
from driftline.services.inference.predictor import PredictInput, Predictor, prediction_ids
from driftline.services.inference.testing import FakeRuntime, FakeStore, ListSink

NAMES = ("amount", "velocity", "foreign")


async def setup(
    *,
    routing: RoutingOptions | None = None,
    policy: StalenessPolicy = StalenessPolicy.SERVE,
    challenger: bool = False,
) -> tuple[Predictor, ModelSlots, FakeStore, ListSink]:
    slots = ModelSlots("fraud", BatchingOptions(max_batch_size=16), routing or RoutingOptions())
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 1, feature_names=NAMES), FakeRuntime())
    if challenger:
        # The challenger reads its columns in another order: its score is the "foreign" feature.
        await slots.install(
            Role.CHALLENGER,
            ModelMeta("fraud", 2, feature_names=("foreign", "amount", "velocity")),
            FakeRuntime(),
        )
    store = FakeStore(NAMES)
    sink = ListSink()
    predictor = Predictor(slots=slots, features=store, sink=sink, policy=policy, threshold=0.5)
    return predictor, slots, store, sink


async def test_predictions_carry_score_label_version_freshness_and_are_logged():
    predictor, slots, store, sink = await setup()
    store.put("card-1", [0.9, 5, 0], age_s=3.0)
    store.put("card-2", [0.2, 1, 1], age_s=7.5)
    results = await predictor.predict([PredictInput("card-1", "evt-1"), PredictInput("card-2")])
    assert [r.entity_id for r in results] == ["card-1", "card-2"]
    assert results[0].score == pytest.approx(0.9)
    assert results[0].label == 1
    assert results[1].score == pytest.approx(0.2)
    assert results[1].label == 0
    assert results[0].event_id == "evt-1"
    assert results[1].max_feature_age_seconds == pytest.approx(7.5)
    assert {r.model_version for r in results} == {1}
    assert {r.served_by for r in results} == {Role.CHAMPION}
    assert len({r.prediction_id for r in results}) == 2
    assert [f.name for f in results[0].features] == list(NAMES)
    assert sink.records == results
    assert len(store.reads) == 1, "features were not read in one round trip"
    await slots.close()


async def test_concurrent_predictions_each_get_their_own_entity_score():
    predictor, slots, store, _ = await setup()
    for i in range(200):
        store.put(f"card-{i}", [i / 200, 0, 0])
    results = await asyncio.gather(*(predictor.predict([PredictInput(f"card-{i}")]) for i in range(200)))
    for i, (result,) in enumerate(results):
        assert result.entity_id == f"card-{i}"
        assert result.score == pytest.approx(i / 200, abs=1e-6)
    await slots.close()


async def test_an_entity_without_features_is_not_found():
    predictor, slots, store, _ = await setup()
    store.put("card-1", [0.5, 0, 0])
    with pytest.raises(UnknownEntity) as err:
        await predictor.predict([PredictInput("card-1"), PredictInput("nobody")])
    assert err.value.status.name == "NOT_FOUND"
    assert "nobody" in str(err.value)
    await slots.close()


async def test_fail_policy_refuses_stale_features_but_still_tells_unknown_entities_apart():
    predictor, slots, store, _ = await setup(policy=StalenessPolicy.FAIL)
    store.put("card-1", [0.5, 0, 0], stale=("velocity",))
    with pytest.raises(FailedPrecondition) as err:
        await predictor.predict([PredictInput("card-1")])
    assert err.value.status.name == "FAILED_PRECONDITION"
    with pytest.raises(UnknownEntity):
        await predictor.predict([PredictInput("nobody")])
    store.put("card-2", [0.5, 0, 0])
    assert (await predictor.predict([PredictInput("card-2")]))[0].score == pytest.approx(0.5)
    await slots.close()


async def test_serve_policy_serves_stale_values_marked_stale():
    predictor, slots, store, _ = await setup(policy=StalenessPolicy.SERVE)
    store.put("card-1", [0.5, 0, 0], stale=("velocity",))
    (result,) = await predictor.predict([PredictInput("card-1")])
    assert [f.status for f in result.features] == [FeatureStatus.OK, FeatureStatus.STALE, FeatureStatus.OK]
    assert store.reads[-1][1] is StalenessPolicy.SERVE
    await slots.close()


async def test_bad_requests_are_refused_before_reading_features():
    predictor, slots, store, _ = await setup()
    with pytest.raises(UnknownModel):
        await predictor.predict([PredictInput("card-1", model_name="credit")])
    with pytest.raises(Exception, match="entity_id is empty"):
        await predictor.predict([PredictInput("")])
    with pytest.raises(Exception, match="no entities"):
        await predictor.predict([])
    assert store.reads == []
    await slots.close()


async def test_no_champion_means_unavailable():
    slots = ModelSlots("fraud")
    predictor = Predictor(slots=slots, features=FakeStore(NAMES), sink=ListSink())
    with pytest.raises(ModelNotReady):
        await predictor.predict([PredictInput("card-1")])


async def test_canary_entities_are_served_by_the_challenger_with_its_own_columns():
    predictor, slots, store, sink = await setup(routing=RoutingOptions(canary_share=0.5), challenger=True)
    for i in range(40):
        store.put(f"card-{i}", [0.25, 0, 0.75])
    results = await predictor.predict([PredictInput(f"card-{i}") for i in range(40)])
    assert [r.entity_id for r in results] == [f"card-{i}" for i in range(40)]
    by_role = {Role.CHAMPION: [], Role.CHALLENGER: []}
    for r in results:
        by_role[r.served_by].append(r)
    assert by_role[Role.CHAMPION]
    assert by_role[Role.CHALLENGER]
    assert all(r.model_version == 1 and r.score == pytest.approx(0.25) for r in by_role[Role.CHAMPION])
    assert all(r.model_version == 2 and r.score == pytest.approx(0.75) for r in by_role[Role.CHALLENGER])
    assert [f.name for f in by_role[Role.CHALLENGER][0].features] == ["foreign", "amount", "velocity"]
    again = await predictor.predict([PredictInput(f"card-{i}") for i in range(40)])
    assert [r.served_by for r in again] == [r.served_by for r in results]
    assert len(sink.records) == 80
    await slots.close()


async def test_shadow_scores_are_logged_never_returned():
    predictor, slots, store, sink = await setup(routing=RoutingOptions(shadow=True), challenger=True)
    store.put("card-1", [0.25, 0, 0.75])
    (result,) = await predictor.predict([PredictInput("card-1", "evt-9")])
    assert result.served_by is Role.CHAMPION
    assert result.score == pytest.approx(0.25)
    await predictor.drain()
    shadow = [r for r in sink.records if r.served_by is Role.SHADOW]
    assert len(shadow) == 1
    assert shadow[0].model_version == 2
    assert shadow[0].score == pytest.approx(0.75)
    assert shadow[0].event_id == "evt-9"
    assert shadow[0].prediction_id != result.prediction_id
    await slots.close()


async def test_a_version_threshold_overrides_the_service_threshold():
    slots = ModelSlots("fraud")
    await slots.install(
        Role.CHAMPION, ModelMeta("fraud", 1, feature_names=NAMES, threshold=0.8), FakeRuntime()
    )
    store = FakeStore(NAMES)
    store.put("card-1", [0.7, 0, 0])
    predictor = Predictor(slots=slots, features=store, sink=ListSink(), threshold=0.5)
    (result,) = await predictor.predict([PredictInput("card-1")])
    assert result.label == 0
    await slots.close()


def test_prediction_ids_are_distinct_random_uuids():
    ids = prediction_ids(500)
    assert len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


async def test_an_unreachable_online_store_is_unavailable_not_an_internal_error():
    import redis

    from driftline.kit.errors import Unavailable
    from driftline.kit.outages import OutagePolicy

    class DownStore(FakeStore):
        async def read_frame(self, entity_ids, *, now=None, policy=None):
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:16379. Connection refused.")

    slots = ModelSlots("fraud", BatchingOptions(max_batch_size=16), RoutingOptions())
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 1, feature_names=NAMES), FakeRuntime())
    sink = ListSink()
    predictor = Predictor(
        slots=slots,
        features=DownStore(NAMES),
        sink=sink,
        outages=OutagePolicy(errors=(redis.ConnectionError,)),
    )
    with pytest.raises(Unavailable) as err:
        await predictor.predict([PredictInput("card-1")])
    assert err.value.status.name == "UNAVAILABLE"
    assert sink.records == []
    await slots.close()
