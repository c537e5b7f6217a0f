"""``delete_keys`` on the real Redis: everything under a prefix goes, nothing else does."""

from __future__ import annotations

import pytest

from driftline.kit.redis_clients import delete_keys, redis_client
from driftline.kit.testing import unique_prefix

pytestmark = pytest.mark.integration


def test_every_key_under_the_prefix_is_deleted_and_no_other(redis_settings):
    client = redis_client(redis_settings)
    base = unique_prefix()
    prefix = f"{base}run[1]*?:"  # glob characters are matched literally
    try:
        with client.pipeline(transaction=False) as pipe:
            for i in range(12_000):  # more than one SCAN chunk
                pipe.set(f"{prefix}{i}", b"x")
            pipe.set(f"{base}run1a:kept", b"x")  # what the glob would match if read as one
            pipe.set(f"{base}run[1]*?-kept", b"x")
            pipe.execute()
        assert delete_keys(client, prefix) == 12_000
        assert client.exists(f"{base}run1a:kept", f"{base}run[1]*?-kept") == 2
        assert delete_keys(client, prefix) == 0
    finally:
        delete_keys(client, base)
        client.close()
