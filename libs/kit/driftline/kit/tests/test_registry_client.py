"""The registry client's retention rule (the RPCs themselves are tested against the registry)."""

from __future__ import annotations

from driftline.kit.registry_client import idle_versions
from driftline.registry.v1 import registry_pb2 as pb


def test_idle_versions_spare_aliased_archived_and_the_newest():
    def version(number, *aliases, archived=False):
        found = pb.ModelVersion(version=number, aliases=aliases)
        if archived:
            found.archived_at.GetCurrentTime()
        return found

    versions = [
        version(5),
        version(1),
        version(2, "champion"),
        version(3, archived=True),
        version(4),
        version(6),
    ]
    assert idle_versions(versions, keep=2) == [1, 4]
    assert idle_versions(versions, keep=0) == [1, 4, 5, 6]
    assert idle_versions(versions, keep=10) == []
