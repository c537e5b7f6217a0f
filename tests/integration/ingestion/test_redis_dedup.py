"""The Redis de-duplicator against the real Redis: order, replays, horizon, connection hygiene."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis

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
        keys = client.scan_iter(match=f"{prefix}*", count=1000)
        while batch := list(itertools.islice(keys, 1000)):
            client.unlink(*batch)
        client.close()


def test_claims_sent_in_parts_are_decided_in_order_and_replays_win_again(
    client: tuple[redis.Redis, str],
) -> None:
    redis_client, prefix = client
    dedup = RedisDeduplicator(redis_client, ttl_s=60, key_prefix=prefix)
    with dedup.claims() as claims:
        claims.send(["a", "b"], ["raw/0/1", "raw/0/2"])
        claims.send(["a", "c"], ["raw/1/9", "raw/0/3"])  # a second copy of "a", in a later part
        assert claims.verdicts() == [True, True, False, True]
    with dedup.claims() as claims:
        claims.send(["a", "a"], ["raw/0/1", "raw/1/9"])  # the winner replayed, then the loser
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
            claims.send(["x"], ["raw/0/1"])
            raise RuntimeError("the handler failed before reading the verdicts")

    with pytest.raises(RuntimeError):
        fail_before_reading()
    # The next batch on the same pool reads its own replies, not the abandoned one.
    with dedup.claims() as claims:
        claims.send(["y", "x"], ["raw/0/2", "raw/0/3"])
        assert claims.verdicts() == [True, False]
    assert redis_client.ping()
