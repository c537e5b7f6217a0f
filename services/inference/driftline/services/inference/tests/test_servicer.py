from __future__ import annotations

import pytest

from driftline.features.v1 import features_pb2
from driftline.featurestore.vectors import EntityFeatures, FeatureFrame, FeatureStatus, FeatureValue
from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import utcnow
from driftline.kit.errors import InvalidArgument
from driftline.services.inference.models import Role
from driftline.services.inference.predictor import PredictionResult
from driftline.services.inference.servicer import fill, with_features


def _result() -> PredictionResult:
    return PredictionResult(
        prediction_id="5f0c2a1e-8a3b-4c55-9a0d-2f7f3c1e9b11",
        entity_id="card-7",
        event_id="evt-7",
        score=0.75,
        label=1,
        model_name="fraud",
        model_version=4,
        max_feature_age_seconds=90.5,
        frame=FeatureFrame.from_entities(
            [
                EntityFeatures(
                    "card-7",
                    "transactions",
                    1,
                    (
                        FeatureValue("amount", 12.5, 1_800_000_000.25, 2.5, FeatureStatus.OK),
                        # past its ttl: an entity's values share the time of its newest event
                        FeatureValue("velocity", 3.0, 1_800_000_000.25, 2.5, FeatureStatus.STALE),
                        FeatureValue("foreign", 0.0, None, None, FeatureStatus.MISSING),
                        FeatureValue("count", 2.0, 1_800_000_000.25, 2.5, FeatureStatus.OK),
                    ),
                )
            ]
        ),
        row=0,
        served_by=Role.CHALLENGER,
        predicted_at=utcnow(),
    )


def test_a_prediction_goes_on_the_wire_with_every_feature_and_its_event_time():
    result = _result()
    response = inference_pb2.PredictResponse()
    fill(response.prediction, result, features=True)
    p = inference_pb2.PredictResponse.FromString(response.SerializeToString()).prediction
    assert (p.prediction_id, p.entity_id, p.model_name, p.model_version) == (
        result.prediction_id,
        "card-7",
        "fraud",
        4,
    )
    assert (p.score, p.label, p.max_feature_age_seconds, p.served_by) == (0.75, 1, 90.5, "challenger")
    amount, velocity, foreign, count = p.features
    assert (amount.name, amount.value, amount.age_seconds) == ("amount", 12.5, 2.5)
    assert (amount.event_time.seconds, amount.event_time.nanos) == (1_800_000_000, 250_000_000)
    assert amount.status == features_pb2.FEATURE_STATUS_OK
    assert velocity.status == features_pb2.FEATURE_STATUS_STALE
    assert (velocity.value, velocity.event_time) == (3.0, amount.event_time)
    assert foreign.status == features_pb2.FEATURE_STATUS_MISSING
    assert not foreign.HasField("event_time")
    assert foreign.age_seconds == 0.0
    assert (count.name, count.value, count.event_time) == ("count", 2.0, amount.event_time)


def test_without_features_a_prediction_keeps_everything_else():
    result = _result()
    full, basic = inference_pb2.Prediction(), inference_pb2.Prediction()
    fill(full, result, features=True)
    fill(basic, result, features=False)
    assert len(basic.features) == 0
    del full.features[:]
    assert basic == full
    assert basic.max_feature_age_seconds == 90.5


def test_only_the_full_view_carries_features_and_an_unknown_view_is_refused():
    assert with_features(inference_pb2.PREDICTION_VIEW_FULL)
    assert not with_features(inference_pb2.PREDICTION_VIEW_BASIC)
    assert not with_features(inference_pb2.PREDICTION_VIEW_UNSPECIFIED)
    with pytest.raises(InvalidArgument, match="unknown prediction view 7"):
        with_features(7)
