"""What the trainer needs from the model registry, as a Protocol the core codes against.

``driftline.kit.registry_client.RegistryClient`` satisfies it in the service (see
``app.py``); unit tests use ``fakes.InMemoryRegistry``. Errors follow the kit's error root:
``NotFound`` for an unknown version or alias, ``Aborted`` when a compare-and-swap loses.
"""

from __future__ import annotations

from typing import Protocol

from driftline.registry.v1 import registry_pb2


class Registry(Protocol):
    def register(self, request: registry_pb2.RegisterModelVersionRequest) -> registry_pb2.ModelVersion: ...

    def set_alias(
        self, name: str, alias: str, version: int, expected_version: int, reason: str
    ) -> registry_pb2.AliasChange: ...

    def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> registry_pb2.ModelVersion: ...

    def fetch_artifact(self, name: str, version: int) -> bytes: ...

    def record_run(self, run: registry_pb2.Run) -> registry_pb2.Run: ...
