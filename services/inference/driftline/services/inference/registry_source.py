"""Adapter: the asyncio registry client (``driftline.kit.registry_client``) as the loader's
``ModelSource``.

The loader runs in worker threads (loads are slow and blocking); the client's grpc.aio channel
belongs to the event loop. Each call is therefore scheduled on that loop and awaited from the
worker thread, so network I/O stays asynchronous and the loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from driftline.kit.errors import NotFound
from driftline.registry.v1 import registry_pb2
from driftline.services.inference.loader import ModelRef

T = TypeVar("T")


class RegistryClientLike(Protocol):
    """The calls of ``driftline.kit.registry_client.RegistryClient`` this adapter uses."""

    async def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None, omit_reference: bool = True
    ) -> registry_pb2.ModelVersion: ...

    async def fetch_artifact(
        self, name: str, version: int, *, expected_sha256: str | None = None
    ) -> bytes: ...

    async def close(self) -> None: ...


def to_ref(version: registry_pb2.ModelVersion) -> ModelRef:
    return ModelRef(
        name=version.name,
        version=version.version,
        sha256=version.artifact_sha256,
        feature_names=tuple(version.signature.feature_names),
        params=dict(version.params),
    )


class RegistryModelSource:
    """Resolves aliases and fetches artifacts through the registry's gRPC API."""

    def __init__(
        self, client: RegistryClientLike, loop: asyncio.AbstractEventLoop, *, timeout_s: float = 60.0
    ) -> None:
        self._client = client
        self._loop = loop
        self._timeout_s = timeout_s

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout_s)

    def resolve(self, name: str, alias: str) -> ModelRef | None:
        try:
            return to_ref(self._wait(self._client.get_version(name, alias=alias)))
        except NotFound:
            return None

    def describe(self, name: str, version: int) -> ModelRef:
        return to_ref(self._wait(self._client.get_version(name, version=version)))

    def artifact(self, name: str, version: int) -> bytes:
        return self._wait(self._client.fetch_artifact(name, version))

    async def close(self) -> None:
        await self._client.close()
