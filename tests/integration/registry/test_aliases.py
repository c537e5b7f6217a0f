"""Compare-and-swap aliases over gRPC on real SQLite and real PostgreSQL: of concurrent movers
exactly one wins, the rest get ABORTED; every change reaches the real broker once, in order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import grpc
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from driftline.kit.errors import Aborted, FailedPrecondition, PermissionDenied
from driftline.kit.registry_client import RegistryClient
from driftline.kit.testing import consume
from driftline.registry.v1 import registry_pb2 as pb
from driftline.services.registry import testing
from driftline.services.registry.store.schema import aliases

from .conftest import TOKEN

pytestmark = pytest.mark.integration

MOVERS = 8


async def _outcomes(calls) -> list[str]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    outcomes = []
    for result in results:
        if isinstance(result, Aborted):
            outcomes.append("aborted")
        elif isinstance(result, BaseException):
            raise result
        else:
            outcomes.append(f"won:{result.version}")
    return outcomes


async def test_concurrent_alias_moves_exactly_one_wins(start_registry, events_topic, kafka_settings):
    app, address = await start_registry()
    clients = [RegistryClient(address, TOKEN, actor=f"mover{i}") for i in range(MOVERS)]
    try:
        for _ in range(MOVERS + 1):
            await clients[0].register(testing.register_request())
        await clients[0].set_alias("fraud", "champion", 1, 0, "start")

        # Everyone read "champion is v1" and now races to move it to their own version.
        outcomes = await _outcomes(
            [c.set_alias("fraud", "champion", i + 2, 1, "race") for i, c in enumerate(clients)]
        )
        winners = [o for o in outcomes if o.startswith("won")]
        assert len(winners) == 1, outcomes
        assert outcomes.count("aborted") == MOVERS - 1
        winner = int(winners[0].split(":")[1])
        assert (await clients[0].get_version("fraud", alias="champion")).version == winner
        with app.database.read() as conn:
            assert conn.execute(select(aliases.c.version)).scalars().all() == [winner]

        # From unset, too: exactly one first setter.
        first = await _outcomes(
            [c.set_alias("fraud", "challenger", i + 1, 0, "first") for i, c in enumerate(clients)]
        )
        assert sum(o.startswith("won") for o in first) == 1
        assert (await clients[0].verify_audit()).ok

        # Registrations, then one "champion" start, one race winner and one "challenger" winner.
        expected = MOVERS + 1 + 3
        # In a thread: the relay publishing these runs on this test's event loop.
        messages = await asyncio.to_thread(
            consume, kafka_settings, events_topic.name, expected=expected, timeout_s=30
        )
        events = [pb.ModelEvent.FromString(m.value()) for m in messages]
        assert [e.audit_seq for e in events] == list(range(1, expected + 1))
        assert len({e.event_id for e in events}) == expected
        alias_events = [e for e in events if e.type == pb.MODEL_EVENT_TYPE_ALIAS_SET]
        assert [(e.alias, e.previous_version, e.version) for e in alias_events][:2] == [
            ("champion", 0, 1),
            ("champion", 1, winner),
        ]
        assert all(m.key() == b"fraud" for m in messages)
    finally:
        for c in clients:
            await c.close()


async def test_concurrent_registrations_get_distinct_versions(start_registry):
    _, address = await start_registry()
    clients = [RegistryClient(address, TOKEN) for _ in range(6)]
    try:
        registered = await asyncio.gather(
            *[c.register(testing.register_request("newmodel")) for c in clients]
        )
        assert sorted(mv.version for mv in registered) == [1, 2, 3, 4, 5, 6]
        assert (await clients[0].verify_audit()).records == 6
    finally:
        for c in clients:
            await c.close()


async def test_history_and_lock_on_the_real_database(start_registry):
    _, address = await start_registry()
    async with RegistryClient(address, TOKEN) as client:
        await client.register(testing.register_request())
        await client.register(testing.register_request())
        await client.set_alias("fraud", "champion", 1, 0)
        between = datetime.now(UTC)
        await asyncio.sleep(0.01)
        await client.lock("fraud", "release-7", "deploy window")
        with pytest.raises(FailedPrecondition):
            await client.set_alias("fraud", "champion", 2, 1)
        await client.set_alias("fraud", "champion", 2, 1, "ship", lock_owner="release-7")
        await client.unlock("fraud", "release-7")
        assert await client.resolve_alias_at("fraud", "champion", between) == 1
        assert await client.resolve_alias_at("fraud", "champion", datetime.now(UTC)) == 2
        actions = [r.action for r in await client.list_audit("fraud")]
        assert actions == [
            "version_registered",
            "version_registered",
            "alias_set",
            "locked",
            "alias_set",
            "unlocked",
        ]


async def test_a_lock_left_by_a_removed_token_is_forced_open_on_the_real_database(
    start_registry, events_topic, kafka_settings
):
    before = {"ops": SecretStr("ops-token"), "admin": SecretStr("admin-token")}
    _, old_address = await start_registry(tokens=before, lock_breakers=["admin"])
    async with RegistryClient(old_address, "ops-token") as ops:
        await ops.register(testing.register_request())
        await ops.lock("fraud", "freeze", "incident 12")
    # A replica on the same database whose TOKENS no longer hold the ops token.
    after = {"admin": SecretStr("admin-token"), "trainer": SecretStr("trainer-token")}
    _, address = await start_registry(tokens=after, lock_breakers=["admin"], outbox_enabled=False)
    async with (
        RegistryClient(address, "admin-token") as admin,
        RegistryClient(address, "trainer-token") as trainer,
    ):
        with pytest.raises(PermissionDenied, match="token of ops"):
            await trainer.set_alias("fraud", "champion", 1, 0, lock_owner="freeze")
        with pytest.raises(PermissionDenied, match="token of ops"):
            await admin.unlock("fraud", "freeze", "without force")

        await admin.unlock("fraud", "freeze", "ops token revoked", force=True)

        await trainer.set_alias("fraud", "champion", 1, 0)
        forced = [r for r in await admin.list_audit("fraud") if r.action == "unlocked"]
        assert [(r.actor, r.reason) for r in forced] == [("admin", "ops token revoked")]
        assert json.loads(forced[0].before_json)["holder"] == "ops"
        assert (await admin.verify_audit()).ok
    # Every change reaches the broker through the first replica's relay, the forced one too.
    messages = await asyncio.to_thread(consume, kafka_settings, events_topic.name, expected=4, timeout_s=30)
    events = [pb.ModelEvent.FromString(m.value()) for m in messages]
    assert [(e.type, e.actor) for e in events] == [
        (pb.MODEL_EVENT_TYPE_VERSION_REGISTERED, "ops"),
        (pb.MODEL_EVENT_TYPE_LOCKED, "ops"),
        (pb.MODEL_EVENT_TYPE_UNLOCKED, "admin"),
        (pb.MODEL_EVENT_TYPE_ALIAS_SET, "trainer"),
    ]


async def test_alias_moves_race_through_raw_grpc_status_codes(start_registry):
    _, address = await start_registry()
    async with RegistryClient(address, TOKEN) as client:
        await client.register(testing.register_request())
        await client.set_alias("fraud", "champion", 1, 0)
    async with grpc.aio.insecure_channel(address) as channel:
        from driftline.registry.v1 import registry_pb2_grpc

        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetAlias(
                pb.SetAliasRequest(name="fraud", alias="champion", version=1, expected_version=0),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
            )
        assert caught.value.code() == grpc.StatusCode.ABORTED
