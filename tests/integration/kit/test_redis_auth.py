from __future__ import annotations

import pytest
import redis

pytestmark = pytest.mark.integration


def test_redis_rejects_unauthenticated_clients(redis_settings):
    authed = redis.Redis.from_url(redis_settings.url)
    port = authed.connection_pool.connection_kwargs["port"]
    host = authed.connection_pool.connection_kwargs["host"]
    anonymous = redis.Redis(host=host, port=port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("dl:test:anon", "1")
    assert authed.ping() is True


def test_redis_rejects_a_wrong_password(redis_settings):
    authed = redis.Redis.from_url(redis_settings.url)
    kwargs = authed.connection_pool.connection_kwargs
    wrong = redis.Redis(
        host=kwargs["host"], port=kwargs["port"], username=kwargs["username"], password="nope"
    )
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
