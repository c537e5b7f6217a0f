"""The kit's Redis clients over TLS, against a real redis-server that serves mutual TLS only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from driftline.kit.redis_clients import async_redis_client, redis_client
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import Authority, ServerTls, free_port, redis_server

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class TlsRedis:
    authority: Authority
    port: int
    #: A client with a certificate the server's CA signed.
    settings: RedisSettings


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    authority = Authority(tmp_path, "redis")
    server, client = authority.issue("server"), authority.issue("client")
    port = free_port()
    tls = ServerTls(server.cert, server.key, authority.ca_file)
    with redis_server(port, tmp_path, tls=tls):
        yield TlsRedis(
            authority,
            port,
            RedisSettings(
                url=f"rediss://127.0.0.1:{port}/0",
                tls_ca_file=authority.ca_file,
                tls_cert_file=client.cert,
                tls_key_file=client.key,
                socket_timeout_s=1.0,
                retries=0,
            ),
        )


async def test_the_sync_and_async_clients_speak_mutual_tls(tls_redis: TlsRedis) -> None:
    sync = redis_client(tls_redis.settings)
    try:
        sync.set("k", b"from sync")
        assert sync.get("k") == b"from sync"
    finally:
        sync.close()
    client = async_redis_client(tls_redis.settings)
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


def test_a_client_without_a_certificate_is_refused(tls_redis: TlsRedis) -> None:
    anonymous = tls_redis.settings.copy(update={"tls_cert_file": None, "tls_key_file": None})
    _refused(anonymous)  # the server ends the handshake: no answer, no data


def test_a_server_whose_certificate_the_client_does_not_trust_is_refused(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path, "stranger")
    assert "certificate verify failed" in _refused(
        tls_redis.settings.copy(update={"tls_ca_file": stranger.ca_file})
    )


def test_plaintext_to_the_tls_port_gets_nothing(tls_redis: TlsRedis) -> None:
    _refused(RedisSettings(url=f"redis://127.0.0.1:{tls_redis.port}/0", socket_timeout_s=1.0, retries=0))
