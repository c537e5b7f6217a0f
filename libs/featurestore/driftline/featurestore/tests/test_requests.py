from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from driftline.featurestore.requests import AsyncRequests, Requests, pack


class FakeConnection:
    """Answers each request with its scripted replies; an exception in the script is raised."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent: list[bytes] = []
        self.disconnects = 0
        self.retry = Retry(NoBackoff(), 2)

    def send_packed_command(self, pieces: Any) -> None:
        self.sent.append(b"".join(pieces))

    def read_response(self) -> Any:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def disconnect(self) -> None:
        self.disconnects += 1


class FakePool:
    def __init__(self, *connections: FakeConnection) -> None:
        self.free = list(connections)
        self.released: list[FakeConnection] = []

    def get_connection(self) -> FakeConnection:
        return self.free.pop(0)

    def release(self, conn: FakeConnection) -> None:
        self.released.append(conn)


class FakeClient:
    def __init__(self, pool: FakePool) -> None:
        self.connection_pool = pool


def requests_with(*connections: FakeConnection) -> tuple[Requests, FakePool]:
    pool = FakePool(*connections)
    return Requests(FakeClient(pool)), pool  # type: ignore[arg-type]


def test_pack_writes_the_redis_protocol() -> None:
    assert pack(b"HMGET", "k", b"t", 1) == b"*4\r\n$5\r\nHMGET\r\n$1\r\nk\r\n$1\r\nt\r\n$1\r\n1\r\n"


def test_requests_reuse_one_connection_and_return_every_reply() -> None:
    conn = FakeConnection([b"a", b"b", b"c"])
    requests, pool = requests_with(conn)
    assert requests.send(pack("GET", "x") + pack("GET", "y"), 2) == [b"a", b"b"]
    assert requests.send(pack("GET", "z")) == [b"c"]
    assert conn.sent == [pack("GET", "x") + pack("GET", "y"), pack("GET", "z")]
    requests.close()
    assert pool.released == [conn]


def test_a_dropped_connection_is_reconnected_and_the_request_retried() -> None:
    conn = FakeConnection([redis.ConnectionError("reset"), redis.TimeoutError("slow"), b"ok"])
    requests, _ = requests_with(conn)
    assert requests.send(pack("GET", "x")) == [b"ok"]
    assert len(conn.sent) == 3
    assert conn.disconnects == 2


def test_an_error_reply_closes_the_connection_as_replies_may_be_pending() -> None:
    conn = FakeConnection([redis.ResponseError("WRONGTYPE"), b"late reply", b"next"])
    requests, _ = requests_with(conn)
    with pytest.raises(redis.ResponseError):
        requests.send(pack("GET", "x") + pack("GET", "y"), 2)
    assert conn.disconnects == 1
    conn.replies = [b"next"]  # a real connection reconnects: nothing stale is read
    assert requests.send(pack("GET", "z")) == [b"next"]


class AsyncFakeConnection(FakeConnection):
    async def send_packed_command(self, pieces: Any) -> None:  # type: ignore[override]
        super().send_packed_command(pieces)

    async def read_response(self) -> Any:
        return super().read_response()

    async def disconnect(self, nowait: bool = False) -> None:  # type: ignore[override]
        super().disconnect()


class AsyncFakePool(FakePool):
    async def get_connection(self) -> FakeConnection:  # type: ignore[override]
        return super().get_connection()

    async def release(self, conn: FakeConnection) -> None:  # type: ignore[override]
        super().release(conn)


async def test_async_requests_retry_a_dropped_connection_and_give_it_back_on_close() -> None:
    from redis.asyncio.retry import Retry as AsyncRetry

    conn = AsyncFakeConnection([redis.ConnectionError("reset"), b"ok", redis.ResponseError("ERR")])
    conn.retry = AsyncRetry(NoBackoff(), 2)  # type: ignore[assignment]
    pool = AsyncFakePool(conn)
    requests = AsyncRequests(FakeClient(pool))  # type: ignore[arg-type]
    assert await requests.send(pack("GET", "x")) == [b"ok"]
    with pytest.raises(redis.ResponseError):
        await requests.send(pack("GET", "y"))
    assert conn.disconnects == 2
    await requests.close()
    assert pool.released == [conn]
