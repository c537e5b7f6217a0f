"""Archiving and artifact collection on real SQLite and real PostgreSQL: an archive and an alias
move racing for one version never both win; an archived version's artifact is collected unless
a live version shares it; the change reaches the real broker."""

from __future__ import annotations

import asyncio

import pytest

from driftline.kit.errors import FailedPrecondition
from driftline.kit.registry_client import RegistryClient
from driftline.kit.testing import consume
from driftline.registry.v1 import registry_pb2 as pb
from driftline.services.registry import testing

from .conftest import TOKEN

pytestmark = pytest.mark.integration

ROUNDS = 6


def _request(name: str, bias: float) -> pb.RegisterModelVersionRequest:
    return testing.register_request(name, artifact=testing.tiny_model(bias=bias))


async def test_an_archive_and_an_alias_move_never_both_win(start_registry):
    _, address = await start_registry()
    async with RegistryClient(address, TOKEN) as archiver, RegistryClient(address, TOKEN) as mover:
        champion = 0
        for round_ in range(ROUNDS):
            version = (await archiver.register(_request("fraud", 0.1 + round_))).version
            archived, moved = await asyncio.gather(
                archiver.archive("fraud", version, "race"),
                mover.set_alias("fraud", "champion", version, champion, "race"),
                return_exceptions=True,
            )
            won = (not isinstance(archived, BaseException), not isinstance(moved, BaseException))
            assert won in {(True, False), (False, True)}, (archived, moved)
            assert isinstance(moved if won[0] else archived, FailedPrecondition)
            found = await archiver.get_version("fraud", version=version)
            assert found.HasField("archived_at") == won[0]
            assert ("champion" in found.aliases) == won[1]
            if won[1]:
                champion = version
            if champion:  # the champion is where the last winning move put it
                assert (await mover.get_version("fraud", alias="champion")).version == champion
        assert (await archiver.verify_audit()).ok


async def test_archived_artifacts_are_collected_and_the_change_announced(
    start_registry, events_topic, kafka_settings
):
    app, address = await start_registry()
    async with RegistryClient(address, TOKEN) as client:
        old = await client.register(_request("fraud", 0.1))
        await client.register(_request("fraud", 0.2))
        shared = await client.register(_request("churn", 0.2))
        await client.set_alias("fraud", "champion", 2, 0)
        await client.archive("fraud", 1, "superseded")
        with pytest.raises(FailedPrecondition):
            await client.set_alias("fraud", "champion", 1, 2)

        removed, freed = await asyncio.to_thread(app.registry.collect_artifacts, 0)

        assert (removed, freed) == (1, old.artifact_size)
        assert not app.artifacts.exists(old.artifact_sha256)
        assert await client.fetch_artifact("churn", 1, expected_sha256=shared.artifact_sha256)
        assert (await client.get_version("fraud", version=1)).artifact_sha256 == old.artifact_sha256
    messages = await asyncio.to_thread(consume, kafka_settings, events_topic.name, expected=5, timeout_s=30)
    archived = pb.ModelEvent.FromString(messages[-1].value())
    assert (
        archived.type,
        archived.model_name,
        archived.version,
        archived.artifact_sha256,
        archived.reason,
    ) == (
        pb.MODEL_EVENT_TYPE_VERSION_ARCHIVED,
        "fraud",
        1,
        old.artifact_sha256,
        "superseded",
    )


async def test_collection_running_flat_out_never_takes_a_live_versions_artifact(start_registry):
    """A collector with no grace period loops while versions whose bytes it has just judged
    unused are registered and others archived: every live version's artifact stays whole."""
    app, address = await start_registry()
    stop = asyncio.Event()
    rounds = 0

    async def collect() -> None:
        nonlocal rounds
        while not stop.is_set():
            await asyncio.to_thread(app.registry.collect_artifacts, 0)
            rounds += 1

    async with RegistryClient(address, TOKEN) as client:
        collector = asyncio.create_task(collect())
        try:
            for round_ in range(12):
                # Three byte patterns, each archived and registered again in turn.
                registered = await client.register(_request("fraud", 0.1 * (round_ % 3)))
                if round_ >= 2:
                    await client.archive("fraud", registered.version - 2, "rotate")
                await asyncio.sleep(0)
        finally:
            stop.set()
            await collector
        assert rounds > 0
        for version in await client.list_versions("fraud"):
            if not version.HasField("archived_at"):
                assert await client.fetch_artifact(
                    "fraud", version.version, expected_sha256=version.artifact_sha256
                )
    live = {v.artifact_sha256 for v in await _versions(address) if not v.HasField("archived_at")}
    await asyncio.to_thread(app.registry.collect_artifacts, 0)
    assert {digest for digest, _ in app.artifacts.entries()} == live


async def _versions(address: str) -> list[pb.ModelVersion]:
    async with RegistryClient(address, TOKEN) as client:
        return await client.list_versions("fraud")
