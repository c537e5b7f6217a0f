"""Pre-packed Redis requests for the feature store's hot paths.

The hot paths (an online read, the stream's batch save) are one or a few commands each, and for
them redis-py's generic path costs more client time than Redis spends: a pool checkout per
command (a lock, a socket poll, observability hooks), Python command packing (~5 µs an argument;
a batch save has thousands) and response callbacks. Here commands are packed by hiredis in C.

* :class:`Requests` (threads) sends them on connections it keeps checked out of a
  ``redis.Redis`` client's pool, one per concurrent request, and reads the raw replies with the
  connection's own parser. Any failure other than a dropped connection closes the connection,
  since replies may still be on their way.
* :class:`AsyncRequests` (asyncio) pipelines them on one connection of its own, opened with the
  ``redis.asyncio.Redis`` client's parameters (address, TLS, credentials, database, client name,
  timeouts, retry policy), with replies parsed by hiredis as they arrive.

Both reconnect a dropped connection and retry the request under the client's retry policy, as
redis-py does: callers send only requests that are safe to repeat.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections import deque
from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.exceptions import InvalidResponse

_RETRIED = (redis.ConnectionError, redis.TimeoutError)
#: What the hiredis reader returns while a reply is still incomplete.
_INCOMPLETE = object()


def pack(*args: str | bytes | int | float) -> bytes:
    """One command in the Redis protocol (what redis-py would send)."""
    return hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub takes 1-tuples only


def _exchange(conn: redis.connection.AbstractConnection, request: bytes, replies: int) -> list[Any]:
    conn.send_packed_command((request,))  # type: ignore[arg-type]  # bytes pieces, as redis-py sends
    read = conn.read_response
    return [read() for _ in range(replies)]


class Requests:
    """Packed requests on a ``redis.Redis`` client's connections; thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # list.pop and list.append are atomic: each thread gets a connection of its own.
        self._idle: list[redis.connection.AbstractConnection] = []
        # One dropped without close() gives its connections back too: otherwise each such
        # instance keeps one out of the pool for good, and a bounded pool runs out.
        weakref.finalize(self, _release, self._pool, self._idle)

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
        _release(self._pool, self._idle)


def _release(pool: Any, idle: list[redis.connection.AbstractConnection]) -> None:
    while idle:
        pool.release(idle.pop())


class _Pending:
    """A request written and waiting for its replies."""

    __slots__ = ("count", "future", "replies", "sent_at")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, sent_at: float) -> None:
        self.future = future
        self.count = count
        self.sent_at = sent_at
        self.replies: list[Any] = []


class _Pipe(asyncio.Protocol):
    """One Redis connection on which requests are written back to back and replies matched to
    them in order (Redis answers a connection's commands in the order they were sent).

    A request whose caller gave up (cancelled) still has its replies read and dropped, so the
    stream stays aligned. Anything that may leave it misaligned (a protocol error, a timeout, a
    lost connection) fails every waiting request and closes the connection.

    ``timeout``: how long the oldest request may wait for its replies (None: no limit). One timer
    per connection watches it, not one per request.
    """

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, notEnoughData=_INCOMPLETE
        )
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[_Pending] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def request(self, data: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Write ``data`` (``replies`` commands); the future resolves to their replies."""
        if self.closed or self._transport is None:
            raise redis.ConnectionError("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), replies, loop.time())
        self._waiting.append(pending)
        self._transport.write(data)
        if self._timer is None and self._timeout is not None:
            self._timer = loop.call_at(pending.sent_at + self._timeout, self._watch)
        return pending.future

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        try:
            while waiting:
                head = waiting[0]
                got = head.replies
                while len(got) < head.count:
                    reply = reader.gets()
                    if reply is _INCOMPLETE:
                        return
                    got.append(reply)
                waiting.popleft()
                if head.future.done():  # cancelled by its caller: its replies are dropped
                    continue
                error = next((r for r in got if isinstance(r, Exception)), None)
                if error is None:
                    head.future.set_result(got)
                else:
                    head.future.set_exception(error)
            if reader.gets() is not _INCOMPLETE:
                raise InvalidResponse("Redis sent a reply no request was waiting for")
        except InvalidResponse as err:
            self.abort(err)

    def _watch(self) -> None:
        """Fail everything once the oldest request has waited too long; else look again when it will have."""
        self._timer = None
        if not self._waiting or self._timeout is None:
            return
        due = self._waiting[0].sent_at + self._timeout
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self.abort(redis.TimeoutError(f"no reply from Redis within {self._timeout} s"))
        else:
            self._timer = loop.call_at(due, self._watch)

    def abort(self, error: Exception) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        self._fail(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(redis.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _fail(self, error: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future = self._waiting.popleft().future
            if not future.done():
                future.set_exception(error)


class _Endpoint:
    """Where and how to connect, taken from a redis-py asyncio client's pool: its address (TCP,
    TLS or Unix socket), credentials, database, client name, timeouts and retry policy."""

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        # A connection object the pool would make, never connected: its parameters normalised.
        model = pool.make_connection()
        self.path = model.path if isinstance(model, aioredis.UnixDomainSocketConnection) else None
        self.host: str = getattr(model, "host", "")
        self.port: int = getattr(model, "port", 0)
        self.ssl = model.ssl_context.get() if isinstance(model, aioredis.SSLConnection) else None
        self.credential_provider = model.credential_provider
        self.username, self.password = model.username, model.password
        self.db = model.db
        self.client_name = model.client_name
        self.timeout = model.socket_timeout
        self.connect_timeout = model.socket_connect_timeout
        self.retry = model.retry

    async def connect(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        pipe: _Pipe | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path is not None:
                    _, pipe = await loop.create_unix_connection(self._pipe, self.path)
                else:
                    transport, pipe = await loop.create_connection(
                        self._pipe, self.host, self.port, ssl=self.ssl
                    )
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                commands = await self._handshake()
                if commands:
                    await pipe.request(b"".join(commands), len(commands))
        except TimeoutError as err:
            if pipe is not None:
                pipe.abort(redis.TimeoutError("connect timed out"))
            raise redis.TimeoutError(f"connecting to Redis timed out after {self.connect_timeout} s") from err
        except OSError as err:
            raise redis.ConnectionError(f"cannot connect to Redis: {err}") from err
        except BaseException:
            if pipe is not None:
                pipe.close()
            raise
        return pipe

    def _pipe(self) -> _Pipe:
        return _Pipe(self.timeout)

    async def _handshake(self) -> list[bytes]:
        """AUTH, SELECT and CLIENT SETNAME as the client would send them (RESP2)."""
        commands = []
        if self.credential_provider is not None:
            credentials = await self.credential_provider.get_credentials_async()
        else:
            credentials = tuple(c for c in (self.username, self.password) if c)
            if self.username and not self.password:
                credentials = ()
        if credentials:
            commands.append(pack(b"AUTH", *credentials))
        if self.db:
            commands.append(pack(b"SELECT", self.db))
        if self.client_name:
            commands.append(pack(b"CLIENT", b"SETNAME", self.client_name))
        return commands


class AsyncRequests:
    """Packed requests pipelined on one asyncio connection of their own.

    Concurrent requests share the connection: each is written at once and its replies are matched
    in order, so a request never waits for another's turn to be sent, only for Redis. Replies are
    parsed by hiredis as they arrive, with no per-reply coroutine (redis-py's asyncio read path
    costs ~10 µs of CPU a reply: 0.6 ms for a 64-entity read). An error reply raises that
    request's ``redis.ResponseError`` and leaves the connection in use; a dropped connection or
    a timeout (the client's ``socket_timeout``) fails the requests in flight, and each is
    retried on a new connection under the client's retry policy.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._endpoint = _Endpoint(client.connection_pool)
        self._pipe: _Pipe | None = None
        self._connecting = asyncio.Lock()

    async def send(self, request: bytes, replies: int = 1) -> list[Any]:
        """See :meth:`Requests.send`."""
        try:
            return await self._attempt(request, replies)
        except _RETRIED:
            return await self._endpoint.retry.call_with_retry(
                lambda: self._attempt(request, replies), self._dropped
            )

    async def _attempt(self, request: bytes, replies: int) -> list[Any]:
        pipe = self._pipe
        if pipe is None or pipe.closed:
            pipe = await self._connected()
        return await pipe.request(request, replies)

    async def _connected(self) -> _Pipe:
        async with self._connecting:  # concurrent callers share one new connection
            pipe = self._pipe
            if pipe is None or pipe.closed:
                pipe = self._pipe = await self._endpoint.connect()
            return pipe

    @staticmethod
    async def _dropped(_error: Exception) -> None:
        # Nothing to close: a connection that failed its requests has closed itself, and an error
        # reply redis-py counts as a connection error (LOADING, too many clients) leaves a working
        # one. Closing "the current" connection here could close a new one that another request's
        # retry just opened, failing its requests in turn.
        return None

    async def close(self) -> None:
        """Close the connection."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
