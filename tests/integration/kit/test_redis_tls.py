"""The kit's Redis clients over TLS, against a real redis-server that serves mutual TLS only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from driftline.kit.redis_clients import async_redis_client, redis_client
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import Authority, ServerTls, free_port, redis_server, tls_redis_server

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[RedisSettings]:
    """A client with a certificate the server's CA signed, failing at once rather than retrying."""
    with tls_redis_server(tmp_path) as settings:
        yield settings.copy(update={"retries": 0})


async def test_the_sync_and_async_clients_speak_mutual_tls(tls_redis: RedisSettings) -> None:
    sync = redis_client(tls_redis)
    try:
        sync.set("k", b"from sync")
        assert sync.get("k") == b"from sync"
    finally:
        sync.close()
    client = async_redis_client(tls_redis)
    try:
        assert await client.get("k") == b"from sync"
        await client.set("k", b"from async")
    finally:
        await client.aclose()


def _refused(settings: RedisSettings) -> str:
    client = redis_client(settings)
    try:
        with pytest.raises(redis.ConnectionError) as refused:
            client.ping()
        return str(refused.value)
    finally:
        client.close()


def test_a_client_without_a_certificate_is_refused(tls_redis: RedisSettings) -> None:
    anonymous = tls_redis.copy(update={"tls_cert_file": None, "tls_key_file": None})
    _refused(anonymous)  # the server ends the handshake: no answer, no data


def test_a_server_whose_certificate_the_client_does_not_trust_is_refused(
    tls_redis: RedisSettings, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path, "stranger")
    assert "certificate verify failed" in _refused(tls_redis.copy(update={"tls_ca_file": stranger.ca_file}))


def test_plaintext_to_the_tls_port_gets_nothing(tls_redis: RedisSettings) -> None:
    plain = tls_redis.url.replace("rediss://", "redis://")
    _refused(RedisSettings(url=plain, socket_timeout_s=1.0, retries=0))


def test_a_tls_test_server_can_serve_the_same_data_in_plaintext_beside(tmp_path: Path) -> None:
    # What bench/inference.py --only tls compares: one redis-server, one data set, two ports.
    authority = Authority(tmp_path, "redis")
    served = authority.issue("server")
    tls_port, plain_port = free_port(), free_port()
    tls = ServerTls(served.cert, served.key, authority.ca_file)
    with redis_server(tls_port, tmp_path, tls=tls, plaintext_port=plain_port) as over_tls:
        over_tls.set("k", b"written over TLS")
        plain = redis.Redis(port=plain_port)
        try:
            assert plain.get("k") == b"written over TLS"
        finally:
            plain.close()
