"""The online store against the real Redis when things change under it: a hash of an earlier
layout at an entity's key (per-feature fields, or the previous version's text values), and
connections that the server drops."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from driftline.featurestore.online import AsyncOnlineStore, OnlineStore
from driftline.featurestore.testing import SMALL_SET
from driftline.featurestore.vectors import EntityFeatures, FeatureStatus
from driftline.kit.redis_clients import async_redis_client, delete_keys, redis_client
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import unique_prefix

pytestmark = pytest.mark.integration

NAMES = SMALL_SET.feature_names
N = len(NAMES)
# The per-feature layout: a value and its event time per feature, and no ``t`` field.
OLD_LAYOUT = {field: "7.5" for name in NAMES for field in (name, f"{name}@t")}
# What the previous version wrote: the values as text in ``v``, no ``d``.
TEXT_LAYOUT = {"t": "1000.0", "v": " ".join(["7.5"] * N)}
# The stores' clients are built as the services build them (driftline.kit.redis_clients, with
# its retry policy), plus a name that finds their connections in CLIENT LIST. Without the retry
# policy (Redis.from_url's default: none) the async write after a drop fails.


@pytest.fixture
def admin(redis_settings: RedisSettings) -> Iterator[redis.Redis]:
    """A client apart from the store's: raw commands and CLIENT LIST / CLIENT KILL."""
    client = redis.Redis.from_url(redis_settings.url)
    yield client
    client.close()


@pytest.fixture
def prefix(admin: redis.Redis) -> Iterator[str]:
    """The test's key prefix, also the CLIENT SETNAME of its store's connections."""
    prefix = unique_prefix().rstrip(".")
    yield prefix
    delete_keys(admin, f"{prefix}:")


@pytest.fixture
def store(redis_settings: RedisSettings, prefix: str) -> Iterator[OnlineStore]:
    store = OnlineStore(redis_client(redis_settings, client_name=prefix), SMALL_SET, key_prefix=prefix)
    yield store
    store.close()


@pytest.fixture
async def async_store(redis_settings: RedisSettings, prefix: str) -> AsyncIterator[AsyncOnlineStore]:
    client = async_redis_client(redis_settings, client_name=prefix)
    store = AsyncOnlineStore(client, SMALL_SET, key_prefix=prefix)
    yield store
    await store.close()


def assert_missing(got: EntityFeatures) -> None:
    assert got.status is FeatureStatus.MISSING
    assert {v.status for v in got.values} == {FeatureStatus.MISSING}
    assert got.vector().tolist() == SMALL_SET.defaults


def assert_ok(got: EntityFeatures, value: float) -> None:
    assert got.status is FeatureStatus.OK
    assert got.vector().tolist() == [value] * N


def connection_ids(admin: redis.Redis, name: str) -> set[int]:
    return {int(c["id"]) for c in admin.client_list() if c["name"] == name}


def kill_connections(admin: redis.Redis, name: str, expected: int) -> set[int]:
    """Kill, by id, the connections named ``name`` (only this test's store has that name)."""
    ids = connection_ids(admin, name)
    assert len(ids) == expected
    for connection_id in ids:
        assert admin.client_kill_filter(_id=str(connection_id)) == 1
    assert not connection_ids(admin, name)
    return ids


def test_a_per_feature_layout_hash_reads_missing_until_a_write_replaces_it(
    store: OnlineStore, admin: redis.Redis
) -> None:
    key = store.key("c1")
    admin.hset(key, mapping=OLD_LAYOUT)
    assert_missing(store.read_one("c1", now=1001.0))
    assert store.write("c1", [2.0] * N, 1000.0) == N
    assert_ok(store.read_one("c1", now=1001.0), 2.0)
    assert set(admin.hkeys(key)) == {b"t", b"d"}
    assert admin.pttl(key) > 0  # the old hash had no expiry; the new one has the store's


async def test_async_a_per_feature_layout_hash_reads_missing_until_a_write_replaces_it(
    async_store: AsyncOnlineStore, admin: redis.Redis
) -> None:
    key = async_store.key("c1")
    admin.hset(key, mapping=OLD_LAYOUT)
    assert_missing(await async_store.read_one("c1", now=1001.0))
    assert await async_store.write("c1", [2.0] * N, 1000.0) == N
    assert_ok(await async_store.read_one("c1", now=1001.0), 2.0)
    assert set(admin.hkeys(key)) == {b"t", b"d"}
    assert admin.pttl(key) > 0


def test_values_the_previous_version_wrote_as_text_read_until_a_newer_write_replaces_them(
    store: OnlineStore, admin: redis.Redis
) -> None:
    key = store.key("c1")
    admin.hset(key, mapping=TEXT_LAYOUT)
    assert_ok(store.read_one("c1", now=1001.0), 7.5)  # an upgrade loses no entity
    assert store.write("c1", [2.0] * N, 999.0) == 0  # older: never moves the values backwards
    assert_ok(store.read_one("c1", now=1001.0), 7.5)
    assert set(admin.hkeys(key)) == {b"t", b"v"}
    assert store.write("c1", [2.0] * N, 1000.5) == N
    assert_ok(store.read_one("c1", now=1001.0), 2.0)
    assert set(admin.hkeys(key)) == {b"t", b"d"}


async def test_async_values_the_previous_version_wrote_as_text_read_until_a_newer_write_replaces_them(
    async_store: AsyncOnlineStore, admin: redis.Redis
) -> None:
    key = async_store.key("c1")
    admin.hset(key, mapping=TEXT_LAYOUT)
    assert_ok(await async_store.read_one("c1", now=1001.0), 7.5)
    assert await async_store.write("c1", [2.0] * N, 1000.0) == N  # an equal time rewrites
    assert_ok(await async_store.read_one("c1", now=1001.0), 2.0)
    assert set(admin.hkeys(key)) == {b"t", b"d"}


def test_reads_and_writes_reconnect_after_the_server_drops_the_connections(
    store: OnlineStore, admin: redis.Redis, prefix: str
) -> None:
    assert_missing(store.read_one("c1", now=1001.0))  # the read keeps its connection checked out
    assert store.write("c1", [1.0] * N, 1000.0) == N  # the write's connection goes back to the pool
    killed = kill_connections(admin, prefix, expected=2)

    assert_ok(store.read_one("c1", now=1001.0), 1.0)
    assert connection_ids(admin, prefix), "the read did not reconnect"
    assert store.write("c1", [2.0] * N, 1000.0) == N
    assert_ok(store.read_one("c1", now=1001.0), 2.0)
    now_open = connection_ids(admin, prefix)
    assert len(now_open) == 2
    assert now_open.isdisjoint(killed)


async def test_async_reads_and_writes_reconnect_after_the_server_drops_the_connections(
    async_store: AsyncOnlineStore, admin: redis.Redis, prefix: str
) -> None:
    assert_missing(await async_store.read_one("c1", now=1001.0))
    assert await async_store.write("c1", [1.0] * N, 1000.0) == N
    killed = kill_connections(admin, prefix, expected=2)

    assert_ok(await async_store.read_one("c1", now=1001.0), 1.0)
    assert connection_ids(admin, prefix), "the read did not reconnect"
    assert await async_store.write("c1", [2.0] * N, 1000.0) == N
    assert_ok(await async_store.read_one("c1", now=1001.0), 2.0)
    now_open = connection_ids(admin, prefix)
    assert len(now_open) == 2
    assert now_open.isdisjoint(killed)
