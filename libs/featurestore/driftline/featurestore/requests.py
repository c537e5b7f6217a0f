"""Pre-packed Redis requests on connections kept checked out of a redis-py client's pool.

The feature store's hot paths (an online read, the stream's batch save) are one or a few commands
each, and for them redis-py's generic path costs more client time than Redis spends: a pool
checkout per command (a lock, a socket poll, observability hooks), Python command packing
(~5 µs an argument; a batch save has thousands) and response callbacks. Here commands are packed
by hiredis in C, sent on a connection this object keeps out of the pool, and their raw replies
read back by the connection's own parser.

Connections come from the client's pool (its address, credentials, TLS, timeouts, retry policy
and ``max_connections``) and go back to it on ``close``; one is taken per concurrent request, so
threads or tasks never share one. A dropped connection is reconnected and the request retried
under the client's retry policy, as redis-py does: callers send only requests that are safe to
repeat. Any other failure closes the connection, since replies may still be on their way.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis

_RETRIED = (redis.ConnectionError, redis.TimeoutError)


def pack(*args: str | bytes | int | float) -> bytes:
    """One command in the Redis protocol (what redis-py would send)."""
    return hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub takes 1-tuples only


def _exchange(conn: redis.connection.AbstractConnection, request: bytes, replies: int) -> list[Any]:
    conn.send_packed_command((request,))  # type: ignore[arg-type]  # bytes pieces, as redis-py sends
    read = conn.read_response
    return [read() for _ in range(replies)]


async def _exchange_async(
    conn: aioredis.connection.AbstractConnection, request: bytes, replies: int
) -> list[Any]:
    await conn.send_packed_command((request,))
    return [await conn.read_response() for _ in range(replies)]


class Requests:
    """Packed requests on a ``redis.Redis`` client's connections; thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # list.pop and list.append are atomic: each thread gets a connection of its own.
        self._idle: list[redis.connection.AbstractConnection] = []

    def send(self, request: bytes, replies: int = 1) -> list[Any]:
        """Send ``request`` (one or more packed commands) and return its ``replies`` raw replies;
        an error reply raises (``redis.ResponseError``)."""
        idle = self._idle
        conn = idle.pop() if idle else self._pool.get_connection()
        try:
            try:
                return _exchange(conn, request, replies)
            except _RETRIED:
                conn.disconnect()
                return conn.retry.call_with_retry(  # type: ignore[no-any-return]
                    lambda: _exchange(conn, request, replies), lambda _error: conn.disconnect()
                )
        except BaseException:
            conn.disconnect()
            raise
        finally:
            idle.append(conn)

    def close(self) -> None:
        """Give the connections back to the pool."""
        while self._idle:
            self._pool.release(self._idle.pop())


class AsyncRequests:
    """Packed requests on a ``redis.asyncio.Redis`` client's connections."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._idle: list[aioredis.connection.AbstractConnection] = []

    async def send(self, request: bytes, replies: int = 1) -> list[Any]:
        """See :meth:`Requests.send`."""
        idle = self._idle
        conn = idle.pop() if idle else await self._pool.get_connection()
        try:
            try:
                return await _exchange_async(conn, request, replies)
            except _RETRIED:
                await conn.disconnect()
                return await conn.retry.call_with_retry(
                    lambda: _exchange_async(conn, request, replies), lambda _error: conn.disconnect()
                )
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            idle.append(conn)

    async def close(self) -> None:
        """Give the connections back to the pool."""
        while self._idle:
            await self._pool.release(self._idle.pop())
