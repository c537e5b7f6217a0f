from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
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


def test_requests_dropped_without_close_give_their_connection_back() -> None:
    conn = FakeConnection([b"a"])
    requests, pool = requests_with(conn)
    assert requests.send(pack("GET", "x")) == [b"a"]
    del requests
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


class FakeRedis:
    """A RESP server on a real loopback socket, scripted by command name:

    ``GET k`` answers ``k``; ``SLOW k`` too, 50 ms later; ``FAIL`` an error reply; ``HANG``
    nothing; ``AUTH`` OK or WRONGPASS; anything else OK. With ``dribble`` every reply is written
    one byte at a time. Records every command and counts connections.
    """

    def __init__(self, *, dribble: bool = False, password: bytes = b"secret") -> None:
        self.dribble = dribble
        self.password = password
        self.commands: list[list[bytes]] = []
        self.connections = 0
        #: How many of the next commands make the server hang up without answering.
        self.drop_next = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    self.commands.append(command)
                    name = command[0].upper()
                    if self.drop_next > 0:
                        self.drop_next -= 1
                        return
                    if name == b"HANG":
                        continue
                    if name == b"SLOW":
                        await asyncio.sleep(0.05)
                        name, command = b"GET", [b"GET", command[1]]
                    if name == b"GET":
                        reply = b"$%d\r\n%s\r\n" % (len(command[1]), command[1])
                    elif name == b"FAIL":
                        reply = b"-ERR scripted failure\r\n"
                    elif name == b"AUTH" and command[-1] != self.password:
                        reply = b"-WRONGPASS invalid username-password pair\r\n"
                    else:
                        reply = b"+OK\r\n"
                    for k in range(len(reply)) if self.dribble else [None]:
                        writer.write(reply if k is None else reply[k : k + 1])
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def fake_redis() -> AsyncIterator[FakeRedis]:
    server = FakeRedis()
    await server.start()
    yield server
    await server.stop()


def async_requests(port: int, *, retries: int = 2, timeout: float = 5.0, url_tail: str = "") -> AsyncRequests:
    client = aioredis.Redis.from_url(
        f"redis://{url_tail or '127.0.0.1'}:{port}",
        socket_timeout=timeout,
        retry=AsyncRetry(NoBackoff(), retries),
    )
    return AsyncRequests(client)


def port_of(server: FakeRedis) -> int:
    assert server.server is not None
    return int(server.server.sockets[0].getsockname()[1])


async def test_concurrent_requests_share_one_connection_and_get_their_own_replies(
    fake_redis: FakeRedis,
) -> None:
    requests = async_requests(port_of(fake_redis))
    calls = [
        requests.send(b"".join(pack("GET", f"{i}-{j}") for j in range(i % 3 + 1)), i % 3 + 1)
        for i in range(50)
    ]
    replies = await asyncio.gather(*calls)
    assert replies == [[f"{i}-{j}".encode() for j in range(i % 3 + 1)] for i in range(50)]
    assert fake_redis.connections == 1
    await requests.close()


async def test_replies_split_into_single_bytes_are_reassembled() -> None:
    server = FakeRedis(dribble=True)
    requests = async_requests(await server.start())
    assert await requests.send(pack("GET", "abc") + pack("GET", "d"), 2) == [b"abc", b"d"]
    await requests.close()
    await server.stop()


async def test_an_error_reply_fails_its_request_only_and_keeps_the_connection(fake_redis: FakeRedis) -> None:
    requests = async_requests(port_of(fake_redis))
    with pytest.raises(redis.ResponseError, match="scripted failure"):
        await requests.send(pack("GET", "a") + pack("FAIL"), 2)
    assert await requests.send(pack("GET", "b")) == [b"b"]
    assert fake_redis.connections == 1
    await requests.close()


async def test_a_cancelled_request_has_its_replies_dropped(fake_redis: FakeRedis) -> None:
    requests = async_requests(port_of(fake_redis))
    first = asyncio.ensure_future(requests.send(pack("SLOW", "old")))
    while [b"SLOW", b"old"] not in fake_redis.commands:  # written, not answered yet
        await asyncio.sleep(0.001)
    first.cancel()
    assert await requests.send(pack("GET", "new")) == [b"new"]
    assert first.cancelled()
    assert fake_redis.connections == 1
    await requests.close()


async def test_a_dropped_connection_is_replaced_and_the_request_retried(fake_redis: FakeRedis) -> None:
    requests = async_requests(port_of(fake_redis))
    assert await requests.send(pack("GET", "a")) == [b"a"]
    fake_redis.drop_next = 1  # the server hangs up on the next command, unanswered
    assert await requests.send(pack("GET", "b")) == [b"b"]
    assert fake_redis.connections == 2
    assert fake_redis.commands.count([b"GET", b"b"]) == 2
    await requests.close()


async def test_requests_in_flight_when_the_connection_drops_all_succeed_on_one_new_connection(
    fake_redis: FakeRedis,
) -> None:
    requests = async_requests(port_of(fake_redis))
    assert await requests.send(pack("GET", "warm")) == [b"warm"]
    fake_redis.drop_next = 1
    replies = await asyncio.gather(*(requests.send(pack("GET", f"k{i}")) for i in range(20)))
    assert replies == [[f"k{i}".encode()] for i in range(20)]
    assert fake_redis.connections == 2
    await requests.close()


async def test_a_request_left_unanswered_times_out_and_the_next_one_reconnects(fake_redis: FakeRedis) -> None:
    requests = async_requests(port_of(fake_redis), retries=0, timeout=0.2)
    with pytest.raises(redis.TimeoutError):
        await requests.send(pack("HANG"))
    assert await requests.send(pack("GET", "b")) == [b"b"]
    assert fake_redis.connections == 3  # the first try, its one retry, then a fresh connection
    await requests.close()


async def test_the_handshake_authenticates_selects_the_database_and_names_the_client(
    fake_redis: FakeRedis,
) -> None:
    client = aioredis.Redis.from_url(
        f"redis://reader:secret@127.0.0.1:{port_of(fake_redis)}/3", client_name="inference"
    )
    requests = AsyncRequests(client)
    assert await requests.send(pack("GET", "k")) == [b"k"]
    assert fake_redis.commands[:3] == [
        [b"AUTH", b"reader", b"secret"],
        [b"SELECT", b"3"],
        [b"CLIENT", b"SETNAME", b"inference"],
    ]
    await requests.close()


async def test_a_wrong_password_is_an_authentication_error(fake_redis: FakeRedis) -> None:
    requests = async_requests(port_of(fake_redis), retries=0, url_tail="reader:wrong@127.0.0.1")
    with pytest.raises(redis.AuthenticationError):
        await requests.send(pack("GET", "k"))
    assert [b"GET", b"k"] not in fake_redis.commands


async def test_no_server_is_a_connection_error() -> None:
    server = FakeRedis()
    port = await server.start()
    await server.stop()
    requests = async_requests(port, retries=1)
    with pytest.raises(redis.ConnectionError):
        await requests.send(pack("GET", "k"))
