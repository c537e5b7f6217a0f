"""The online store against the real Redis: guarded writes, pipelined reads, staleness on read."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from driftline.featurestore.online import AsyncOnlineStore, FeatureWrite, OnlineStore
from driftline.featurestore.testing import SMALL_SET
from driftline.featurestore.vectors import FeatureStatus, FeaturesUnavailable, StalenessPolicy
from driftline.kit.redis_clients import delete_keys
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import unique_prefix

pytestmark = pytest.mark.integration

NAMES = SMALL_SET.feature_names
N = len(NAMES)


@pytest.fixture
def store(redis_settings: RedisSettings):
    client = redis.Redis.from_url(redis_settings.url)
    prefix = unique_prefix().rstrip(".")
    yield OnlineStore(client, SMALL_SET, key_prefix=prefix)
    delete_keys(client, f"{prefix}:")
    client.close()


def test_key_format_is_versioned(store: OnlineStore) -> None:
    assert store.key("card-1").endswith(":small:v1:card-1")


def _ages(le: str) -> float:
    name = "driftline_featurestore_feature_age_seconds"
    labels = {"feature_set": SMALL_SET.key}
    return REGISTRY.get_sample_value(f"{name}_bucket", {**labels, "le": le}) or 0.0


def test_write_then_read_many_entities_in_one_round_trip(store: OnlineStore) -> None:
    now = time.time()
    store.write_many([FeatureWrite(f"c{i}", now - 1, [float(i)] * N) for i in range(64)])
    before = {le: _ages(le) for le in ("0.5", "2.5", "+Inf")}
    got = store.read([f"c{i}" for i in range(64)] + ["nobody"], now=now)
    # One age observed per entity found (~1 s old), none for the one missing.
    assert {le: _ages(le) - n for le, n in before.items()} == {"0.5": 0, "2.5": 64, "+Inf": 64}
    assert [e.entity_id for e in got[:3]] == ["c0", "c1", "c2"]
    assert got[5].vector().tolist() == [5.0] * N
    assert got[5].status is FeatureStatus.OK
    assert got[5].values[0].age_seconds == pytest.approx(1.0, abs=1e-6)
    assert got[5].values[0].event_time == pytest.approx(now - 1, abs=1e-6)
    assert got[-1].status is FeatureStatus.MISSING


def test_replayed_older_write_never_moves_a_value_backwards(store: OnlineStore) -> None:
    assert store.write("c1", [2.0] * N, 2000.0) == N
    assert store.write("c1", [1.0] * N, 1000.0) == 0
    assert store.write("c1", [2.0] * N, 2000.0) == N  # same time: idempotent rewrite
    got = store.read_one("c1", now=2001.0)
    assert got.vector().tolist() == [2.0] * N
    assert got.event_time == 2000.0


def test_expired_features_come_back_stale_never_ok(store: OnlineStore) -> None:
    store.write("c1", {name: 3.0 for name in NAMES}, 1000.0)
    fresh = store.read_one("c1", now=1010.0)
    assert fresh.status is FeatureStatus.OK
    later = store.read_one("c1", now=1045.0)  # last_amount's ttl is 30 s, the others' 60 s
    by_name = {v.name: v for v in later.values}
    assert by_name["last_amount"].status is FeatureStatus.STALE
    assert by_name["count_10s"].status is FeatureStatus.OK
    much_later = store.read_one("c1", now=5000.0)
    assert {v.status for v in much_later.values} == {FeatureStatus.STALE}
    assert much_later.vector().tolist() == [3.0] * N  # SERVE: values kept, flagged
    defaulted = store.read_one("c1", now=5000.0, policy=StalenessPolicy.DEFAULT)
    assert defaulted.vector().tolist() == SMALL_SET.defaults


def test_fail_policy_raises_for_stale_or_missing(store: OnlineStore) -> None:
    store.write("c1", [1.0] * N, 1000.0)
    assert store.read(["c1"], now=1001.0, policy=StalenessPolicy.FAIL)[0].ok
    with pytest.raises(FeaturesUnavailable) as caught:
        store.read(["c1", "c2"], now=1001.0, policy=StalenessPolicy.FAIL)
    assert caught.value.entities == ("c2",)
    with pytest.raises(FeaturesUnavailable):
        store.read(["c1"], now=9999.0, policy=StalenessPolicy.FAIL)


async def test_async_store_has_the_same_semantics(store: OnlineStore, redis_settings: RedisSettings) -> None:
    prefix = store.key("x").split(":small:")[0]
    client = aioredis.Redis.from_url(redis_settings.url)
    async_store = AsyncOnlineStore(client, SMALL_SET, key_prefix=prefix)
    try:
        assert await async_store.write("c1", [4.0] * N, 1000.0) == N
        assert await async_store.write("c1", [1.0] * N, 999.0) == 0
        got = await async_store.read(["c1", "c9"], now=1045.0)
        assert got == store.read(["c1", "c9"], now=1045.0)
        assert got[0].vector().tolist() == [4.0] * N
        assert got[1].status is FeatureStatus.MISSING
    finally:
        await async_store.close()


@pytest.mark.parametrize("policy", [StalenessPolicy.SERVE, StalenessPolicy.DEFAULT])
async def test_column_wise_reads_hold_what_the_per_entity_reads_hold(
    store: OnlineStore, redis_settings: RedisSettings, policy: StalenessPolicy
) -> None:
    store.write_many(
        [
            FeatureWrite("fresh", 1000.0, [float(i) for i in range(N)]),
            FeatureWrite("half-stale", 955.0, [2.0] * N),  # 45 s old: last_amount (30 s) is stale
            FeatureWrite("stale", 900.0, [3.0] * N),
        ]
    )
    ids = ["fresh", "nobody", "half-stale", "stale", "fresh"]
    frame = store.read_frame(ids, now=1000.0, policy=policy)
    assert frame.entity_ids == tuple(ids)
    assert frame.missing == (1,)
    assert frame.entities() == store.read(ids, now=1000.0, policy=policy)
    assert frame.values[0].tolist() == [float(i) for i in range(N)]
    assert frame.values[1].tolist() == SMALL_SET.defaults
    assert frame.ages.tolist()[2:4] == [45.0, 100.0]
    stale_last_amount = 0.0 if policy is StalenessPolicy.DEFAULT else 2.0
    assert frame.values[2, NAMES.index("last_amount")] == stale_last_amount
    assert frame.statuses[2, NAMES.index("last_amount")] == FeatureStatus.STALE
    prefix = store.key("x").split(":small:")[0]
    client = aioredis.Redis.from_url(redis_settings.url)
    async_store = AsyncOnlineStore(client, SMALL_SET, key_prefix=prefix)
    try:
        got = await async_store.read_frame(ids, now=1000.0, policy=policy)
        assert got.entities() == frame.entities()
        with pytest.raises(FeaturesUnavailable) as caught:
            await async_store.read_frame(ids, now=1000.0, policy=StalenessPolicy.FAIL)
        assert caught.value.entities == ("nobody", "half-stale", "stale")
        assert "3 of 5 entities" in str(caught.value)
        assert "nobody=MISSING, half-stale=STALE, stale=STALE" in str(caught.value)
    finally:
        await async_store.close()


def test_stores_dropped_without_close_do_not_use_up_a_bounded_pool(redis_settings: RedisSettings) -> None:
    client = redis.Redis.from_url(redis_settings.url, max_connections=2)
    try:
        for _ in range(10):  # e.g. a store built per poll in a loop, never closed
            store = OnlineStore(client, SMALL_SET, key_prefix=unique_prefix().rstrip("."))
            assert store.read(["x"])[0].status is FeatureStatus.MISSING
            del store
    finally:
        client.close()
