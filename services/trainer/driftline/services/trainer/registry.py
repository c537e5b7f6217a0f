"""What the trainer needs from the model registry, as a Protocol the core codes against.

``SyncRegistry`` (the kit's asyncio ``RegistryClient`` driven from a loop thread) satisfies it
in the service; unit tests use ``fakes.InMemoryRegistry``. Errors follow the kit's error root:
``NotFound`` for an unknown version or alias, ``Aborted`` when a compare-and-swap loses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from driftline.kit.registry_client import RegistryClient
from driftline.kit.settings import RegistryTlsSettings
from driftline.registry.v1 import registry_pb2

T = TypeVar("T")


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

    def list_versions(self, name: str) -> list[registry_pb2.ModelVersion]: ...

    def archive(self, name: str, version: int, reason: str) -> registry_pb2.ModelVersion: ...


class SyncRegistry:
    """The kit's asyncio ``RegistryClient`` behind blocking calls, for the trainer's worker thread.

    grpc.aio channels belong to the event loop that created them, so this owns one loop on a
    daemon thread, creates the client there, and runs every call on it.
    """

    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        timeout_s: float = 30.0,
        actor: str = "trainer",
        tls: RegistryTlsSettings | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registry-client", daemon=True)
        self._thread.start()

        async def make() -> RegistryClient:
            return RegistryClient(address, token or None, timeout_s=timeout_s, actor=actor, tls=tls)

        self._client = self._wait(make())

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def client(self) -> RegistryClient:
        return self._client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine of ``client`` (list_runs, list_audit, ...) to completion."""
        return self._wait(coro)

    def register(self, request: registry_pb2.RegisterModelVersionRequest) -> registry_pb2.ModelVersion:
        return self._wait(self._client.register(request))

    def set_alias(
        self, name: str, alias: str, version: int, expected_version: int, reason: str
    ) -> registry_pb2.AliasChange:
        return self._wait(self._client.set_alias(name, alias, version, expected_version, reason))

    def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> registry_pb2.ModelVersion:
        return self._wait(self._client.get_version(name, version=version, alias=alias))

    def fetch_artifact(self, name: str, version: int) -> bytes:
        return self._wait(self._client.fetch_artifact(name, version))

    def record_run(self, run: registry_pb2.Run) -> registry_pb2.Run:
        return self._wait(self._client.record_run(run))

    def list_versions(self, name: str) -> list[registry_pb2.ModelVersion]:
        return self._wait(self._client.list_versions(name))

    def archive(self, name: str, version: int, reason: str) -> registry_pb2.ModelVersion:
        return self._wait(self._client.archive(name, version, reason))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._wait(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
