"""The Redis de-duplicator against the real Redis: order, replays, horizon, connection hygiene."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from driftline.kit.redis_clients import delete_keys
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import unique_prefix
from driftline.services.ingestion.dedup import RedisDeduplicator

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_settings: RedisSettings) -> Iterator[tuple[redis.Redis, str]]:
    prefix = unique_prefix()
    client = redis.Redis.from_url(redis_settings.url)
    try:
        yield client, prefix
    finally:
        delete_keys(client, prefix)
        client.close()


def test_claims_sent_in_parts_are_decided_in_order_and_replays_win_again(
    client: tuple[redis.Redis, str],
) -> None:
    redis_client, prefix = client
    dedup = RedisDeduplicator(redis_client, ttl_s=60, key_prefix=prefix)
    with dedup.claims() as claims:
        claims.send([b"a", b"b"], [b"raw/0/1", b"raw/0/2"])
        claims.send([b"a", b"c"], [b"raw/1/9", b"raw/0/3"])  # a second copy of "a", in a later part
        assert claims.verdicts() == [True, True, False, True]
    with dedup.claims() as claims:
        claims.send([b"a", b"a"], [b"raw/0/1", b"raw/1/9"])  # the winner replayed, then the loser
        assert claims.verdicts() == [True, False]
    assert redis_client.get(f"{prefix}a") == b"raw/0/1"
    assert 0 < redis_client.ttl(f"{prefix}a") <= 60


def test_replies_left_unread_by_a_failure_never_reach_the_next_batch(
    client: tuple[redis.Redis, str],
) -> None:
    redis_client, prefix = client
    dedup = RedisDeduplicator(redis_client, ttl_s=60, key_prefix=prefix)

    def fail_before_reading() -> None:
        with dedup.claims() as claims:
            claims.send([b"x"], [b"raw/0/1"])
            raise RuntimeError("the handler failed before reading the verdicts")

    with pytest.raises(RuntimeError):
        fail_before_reading()
    # The next batch on the same pool reads its own replies, not the abandoned one.
    with dedup.claims() as claims:
        claims.send([b"y", b"x"], [b"raw/0/2", b"raw/0/3"])
        assert claims.verdicts() == [True, False]
    assert redis_client.ping()


@pytest.mark.parametrize("protocol", [2, 3])
def test_thousands_of_claims_read_back_in_order_on_either_protocol(
    client: tuple[redis.Redis, str], redis_settings: RedisSettings, protocol: int
) -> None:
    _, prefix = client
    with redis.Redis.from_url(redis_settings.url, protocol=protocol) as speaking:
        dedup = RedisDeduplicator(speaking, ttl_s=60, key_prefix=prefix)
        ids = [f"ev-{i}".encode() for i in range(5000)]
        with dedup.claims() as claims:
            # Replies span many socket reads; every other id was claimed before by another copy.
            claims.send(ids[::2], [b"raw/0/0"] * len(ids[::2]))
            claims.send(ids, [b"raw/1/%d" % i for i in range(len(ids))])
            verdicts = claims.verdicts()
    assert verdicts == [True] * len(ids[::2]) + [i % 2 == 1 for i in range(len(ids))]


def test_an_error_reply_is_raised_and_the_connection_is_not_reused_with_replies_unread(
    client: tuple[redis.Redis, str],
) -> None:
    redis_client, prefix = client
    redis_client.rpush(f"{prefix}listed", "not a claim")  # SET ... GET on a list: WRONGTYPE
    dedup = RedisDeduplicator(redis_client, ttl_s=60, key_prefix=prefix)
    with dedup.claims() as claims:
        claims.send([b"listed", b"after"], [b"raw/0/1", b"raw/0/2"])
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            claims.verdicts()
    with dedup.claims() as claims:
        claims.send([b"fresh"], [b"raw/0/3"])
        assert claims.verdicts() == [True]
