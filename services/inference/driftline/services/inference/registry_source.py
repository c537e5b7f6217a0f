"""Adapter: the registry client (``driftline.kit.registry_client``) as the loader's ``ModelSource``."""

from __future__ import annotations

from typing import Protocol

from driftline.kit.errors import NotFound
from driftline.registry.v1 import registry_pb2
from driftline.services.inference.loader import ModelRef


class RegistryClientLike(Protocol):
    """The calls of ``driftline.kit.registry_client.RegistryClient`` this adapter uses."""

    def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> registry_pb2.ModelVersion: ...

    def fetch_artifact(self, name: str, version: int) -> bytes: ...


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

    def __init__(self, client: RegistryClientLike) -> None:
        self._client = client

    @classmethod
    def connect(cls, address: str, token: str) -> RegistryModelSource:
        from driftline.kit.registry_client import RegistryClient

        return cls(RegistryClient(address, token))

    def resolve(self, name: str, alias: str) -> ModelRef | None:
        try:
            return to_ref(self._client.get_version(name, alias=alias))
        except NotFound:
            return None

    def describe(self, name: str, version: int) -> ModelRef:
        return to_ref(self._client.get_version(name, version=version))

    def artifact(self, name: str, version: int) -> bytes:
        return self._client.fetch_artifact(name, version)

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()
