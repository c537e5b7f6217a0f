"""Redis clients built the one way every service builds them, from ``RedisSettings``.

``redis.Redis.from_url`` alone gives a client that never retries: a connection the server (or a
restart, a failover, an idle timeout on the way) dropped then fails the next command, and on
the asyncio client even a command on a fresh checkout of a stale pooled connection fails
(redis-py 8 skips its stale-connection check there). These clients retry connection errors and
timeouts with a short exponential backoff on a new connection, so one dropped connection costs
a reconnect, not a failed request. Only idempotent commands and scripts go through them: the
platform's writes are guarded (``SET NX``, event-time-guarded Lua), so a retried one is harmless.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from driftline.kit.settings import RedisSettings

#: What redis-py raises when the server cannot be reached or cannot serve right now: an outage
#: for the consumers' ``driftline.kit.outages.OutagePolicy`` (the batch waits, uncommitted), not
#: a bad message. Connection errors and timeouts (refused, reset, timed out; ``LOADING`` and
#: wrong credentials after a restart are connection errors too) are raised only once the
#: client's own retries are spent. The others are the server's error replies that no message
#: causes and that a later try may not meet: ``OOM`` (memory full under ``noeviction``),
#: ``READONLY`` (a replica, mid-failover), ``MASTERDOWN``, ``TRYAGAIN`` and ``CLUSTERDOWN``
#: (``MasterDownError`` is a ``ClusterDownError``). ``NOPERM`` is one too: the ACL is the same for
#: every message, so an ACL change would otherwise dead-letter the whole stream; held back, the
#: consumers wait and ``driftline_outage_waits_total`` alerts until the ACL is fixed, and nothing
#: is lost. Replies that depend on the command, its keys or its data (``WRONGTYPE``, ``ERR``
#: syntax or argument errors, ``NOSCRIPT``, ``EXECABORT``) stay plain ``ResponseError``s: retried,
#: then isolated and dead-lettered. Error replies are never retried by the client itself.
REDIS_OUTAGE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # type: ignore[attr-defined]  # types-redis 4.6 lacks it
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.NoPermissionError,
)


def _backoff(settings: RedisSettings) -> ExponentialBackoff:
    return ExponentialBackoff(cap=settings.retry_backoff_cap_s, base=settings.retry_backoff_base_s)


def redis_client(settings: RedisSettings, **options: Any) -> redis.Redis:
    """A synchronous client (bytes replies) with the settings' timeouts and retry policy;
    ``options`` go to ``redis.Redis.from_url`` (``client_name``, say)."""
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        retry=Retry(_backoff(settings), settings.retries),
        **settings.tls_options(),
        **options,
    )


def async_redis_client(settings: RedisSettings, **options: Any) -> aioredis.Redis:
    """The asyncio counterpart of :func:`redis_client`."""
    return aioredis.Redis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        retry=AsyncRetry(_backoff(settings), settings.retries),
        **settings.tls_options(),
        **options,
    )


def delete_keys(client: redis.Redis, prefix: str | bytes, *, chunk: int = 5000) -> int:
    """Delete every key that starts with ``prefix`` (SCAN, then UNLINK in chunks); returns how
    many. For cleaning up what one run or one test wrote under a prefix of its own; glob
    characters in the prefix are matched literally."""
    raw = prefix.encode() if isinstance(prefix, str) else prefix
    pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", raw) + b"*"
    deleted = 0
    keys = client.scan_iter(match=pattern, count=chunk)
    while batch := list(itertools.islice(keys, chunk)):
        deleted += int(client.unlink(*batch))
    return deleted
