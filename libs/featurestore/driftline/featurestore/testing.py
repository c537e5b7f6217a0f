"""Small feature sets and event builders for tests of the feature store and its users."""

from __future__ import annotations

from datetime import timedelta

from driftline.featurestore.definitions import Aggregation, FeatureDefinition, FeatureSet, Window
from driftline.featurestore.events import Event
from driftline.kit.topics import TRANSACTIONS_CLEAN


def feature(
    name: str,
    aggregation: Aggregation,
    field: str,
    window: Window | None,
    *,
    ttl_s: float = 60,
    default: float = 0.0,
) -> FeatureDefinition:
    return FeatureDefinition(
        name=name,
        entity="card_id",
        source=TRANSACTIONS_CLEAN,
        aggregation=aggregation,
        field=field,
        window=window,
        ttl=timedelta(seconds=ttl_s),
        default=default,
    )


S = timedelta(seconds=1)

SMALL_SET = FeatureSet(
    name="small",
    version=1,
    entity="card_id",
    source=TRANSACTIONS_CLEAN,
    features=(
        feature("count_10s", Aggregation.COUNT, "event_id", Window.sliding(10 * S)),
        feature("sum_10s", Aggregation.SUM, "amount", Window.sliding(10 * S)),
        feature("count_tumbling_60s", Aggregation.COUNT, "event_id", Window.tumbling(60 * S)),
        feature("sum_tumbling_60s", Aggregation.SUM, "amount", Window.tumbling(60 * S)),
        feature("count_hopping_30s", Aggregation.COUNT, "event_id", Window.hopping(30 * S, 10 * S)),
        feature("mean_20s", Aggregation.MEAN, "amount", Window.sliding(20 * S), default=-1.0),
        feature("std_20s", Aggregation.STD, "amount", Window.sliding(20 * S)),
        feature("min_20s", Aggregation.MIN, "amount", Window.sliding(20 * S)),
        feature("max_20s", Aggregation.MAX, "amount", Window.sliding(20 * S)),
        feature("merchants_20s", Aggregation.DISTINCT_COUNT, "merchant_id", Window.sliding(20 * S)),
        feature("last_amount", Aggregation.LAST, "amount", None, ttl_s=30),
        feature("since_last", Aggregation.TIME_SINCE_LAST, "event_id", None, default=999.0),
    ),
)


def event(
    event_id: str, t: float, amount: float, merchant: str = "m1", entity: str = "c1", **extra: object
) -> Event:
    fields = {"amount": amount, "merchant_id": merchant, "country": "NL", "merchant_category": "grocery"}
    fields.update(extra)
    return Event(event_id=event_id, entity_id=entity, event_time=t, fields=fields)
