"""A small asyncio client of the registry service (``driftline.registry.v1.RegistryService``).

Used by inference (load the champion, hot swap), drift (reference samples) and the trainer
(register, promote, record runs)::

    async with RegistryClient.from_settings(RegistryClientSettings()) as registry:
        mv = await registry.get_version("fraud", alias="champion")
        model_bytes = await registry.fetch_artifact("fraud", mv.version, expected_sha256=mv.artifact_sha256)

Every method raises ``driftline.kit.errors`` subclasses with the server's status (NotFound,
Aborted for a lost alias compare-and-swap, Unauthenticated, DataLoss, Unavailable, ...).
Artifacts are verified against their sha256 on the client side too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

from pydantic import Field, SecretStr

from driftline.kit.codec import to_timestamp
from driftline.kit.errors import DataLoss, call
from driftline.kit.grpc import channel_options, client_channel
from driftline.kit.settings import RegistryTlsSettings
from driftline.registry.v1 import registry_pb2 as pb
from driftline.registry.v1 import registry_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Metadata key naming the caller; the registry records it after the token's actor name.
ACTOR_HEADER = "x-driftline-actor"


def idle_versions(versions: Iterable[pb.ModelVersion], keep: int) -> list[int]:
    """The versions a retention that keeps ``keep`` archives, oldest first: the live ones no
    alias points at, but the newest ``keep`` of them."""
    idle = sorted(v.version for v in versions if not v.aliases and not v.HasField("archived_at"))
    return idle[: max(len(idle) - keep, 0)]


class RegistryClientSettings(RegistryTlsSettings):
    """How to reach the registry (environment prefix ``DRIFTLINE_REGISTRY_``)."""

    address: str = Field("127.0.0.1:15051", description="host:port of the registry's gRPC server.")
    token: SecretStr | None = Field(None, description="Bearer token for writes (DRIFTLINE_REGISTRY_TOKEN).")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, description="Largest message sent or received (artifacts travel whole)."
    )
    timeout_s: float = Field(30.0, description="Deadline of each call.")

    class Config:
        env_prefix = "DRIFTLINE_REGISTRY_"


class RegistryClient:
    """One grpc.aio channel to the registry. Close it (or use ``async with``) when done."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        timeout_s: float = 30.0,
        actor: str | None = None,
        tls: RegistryTlsSettings | None = None,
    ) -> None:
        self.address = address
        self._channel = client_channel(address, channel_options(max_message_bytes), tls)
        self._stub = pb_grpc.RegistryServiceStub(self._channel)
        self._timeout_s = timeout_s
        metadata: list[tuple[str, str]] = []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if actor:
            metadata.append((ACTOR_HEADER, actor))
        self._metadata = tuple(metadata)

    @classmethod
    def from_settings(cls, settings: RegistryClientSettings, *, actor: str | None = None) -> RegistryClient:
        return cls(
            settings.address,
            settings.token.get_secret_value() if settings.token else None,
            settings.max_message_bytes,
            timeout_s=settings.timeout_s,
            actor=actor,
            tls=settings,
        )

    async def _call(self, method: Any, request: Any) -> Any:
        return await call(method, request, metadata=self._metadata, timeout=self._timeout_s)

    # --- Models ---------------------------------------------------------------------------------

    async def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None, omit_reference: bool = True
    ) -> pb.ModelVersion:
        """A version by number or alias; neither: the newest not archived. The reference sample only
        on request."""
        if version is not None and alias is not None:
            raise ValueError("give a version or an alias, not both")
        request = pb.GetModelVersionRequest(name=name, omit_reference=omit_reference)
        if version is not None:
            request.version = version
        elif alias is not None:
            request.alias = alias
        return await self._call(self._stub.GetModelVersion, request)

    async def list_versions(self, name: str = "") -> list[pb.ModelVersion]:
        """Every version of ``name`` (of every model when empty), without reference samples."""
        response = await self._call(self._stub.ListModelVersions, pb.ListModelVersionsRequest(name=name))
        return list(response.versions)

    async def fetch_artifact(self, name: str, version: int, *, expected_sha256: str | None = None) -> bytes:
        """The ONNX bytes of a version, checked against the digest the server reports and, when
        given, against ``expected_sha256`` (e.g. ``ModelVersion.artifact_sha256``). DataLoss on mismatch."""
        artifact = await self._call(self._stub.GetArtifact, pb.GetArtifactRequest(name=name, version=version))
        actual = hashlib.sha256(artifact.content).hexdigest()
        if actual != artifact.sha256 or (expected_sha256 is not None and actual != expected_sha256):
            raise DataLoss(
                f"artifact {name} v{version} has sha256 {actual}; expected "
                f"{expected_sha256 or artifact.sha256}"
            )
        return bytes(artifact.content)

    async def register(self, request: pb.RegisterModelVersionRequest) -> pb.ModelVersion:
        """Register a new version (needs a token). Retrying with the same lineage.run_id and
        artifact returns the version registered the first time."""
        return await self._call(self._stub.RegisterModelVersion, request)

    async def archive(
        self, name: str, version: int, reason: str = "", *, lock_owner: str = ""
    ) -> pb.ModelVersion:
        """Retire a version no alias points at: it can no longer be aliased or fetched
        (FAILED_PRECONDITION while an alias points at it)."""
        request = pb.ArchiveModelVersionRequest(
            name=name, version=version, reason=reason, lock_owner=lock_owner
        )
        return await self._call(self._stub.ArchiveModelVersion, request)

    # --- Aliases and locks ----------------------------------------------------------------------

    async def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        expected_version: int,
        reason: str = "",
        *,
        lock_owner: str = "",
    ) -> pb.AliasChange:
        """Move ``alias`` to ``version`` if it points at ``expected_version`` (0 = unset);
        ``Aborted`` when it does not (someone else moved it first)."""
        request = pb.SetAliasRequest(
            name=name,
            alias=alias,
            version=version,
            expected_version=expected_version,
            reason=reason,
            lock_owner=lock_owner,
        )
        return await self._call(self._stub.SetAlias, request)

    async def delete_alias(
        self, name: str, alias: str, expected_version: int, reason: str = "", *, lock_owner: str = ""
    ) -> pb.AliasChange:
        request = pb.DeleteAliasRequest(
            name=name, alias=alias, expected_version=expected_version, reason=reason, lock_owner=lock_owner
        )
        return await self._call(self._stub.DeleteAlias, request)

    async def resolve_alias_at(self, name: str, alias: str, at: datetime) -> int:
        """The version ``alias`` pointed at, at time ``at`` (timezone-aware); 0 when none."""
        request = pb.ResolveAliasAtRequest(name=name, alias=alias, at=to_timestamp(at))
        response = await self._call(self._stub.ResolveAliasAt, request)
        return int(response.version)

    async def lock(self, name: str, owner: str, reason: str = "") -> pb.ModelLock:
        return await self._call(
            self._stub.LockModel, pb.LockModelRequest(name=name, owner=owner, reason=reason)
        )

    async def unlock(self, name: str, owner: str, reason: str = "", *, force: bool = False) -> pb.ModelLock:
        """Release OWNER's lock; ``force`` breaks one taken with another token (lock breakers
        only, with a reason)."""
        request = pb.UnlockModelRequest(name=name, owner=owner, reason=reason, force=force)
        return await self._call(self._stub.UnlockModel, request)

    # --- Audit ----------------------------------------------------------------------------------

    async def list_audit(
        self, model_name: str = "", *, after_seq: int = 0, limit: int = 100
    ) -> list[pb.AuditRecord]:
        request = pb.ListAuditRequest(model_name=model_name, after_seq=after_seq, limit=limit)
        response = await self._call(self._stub.ListAudit, request)
        return list(response.records)

    async def verify_audit(self) -> pb.VerifyAuditResponse:
        return await self._call(self._stub.VerifyAudit, pb.VerifyAuditRequest())

    # --- Runs -----------------------------------------------------------------------------------

    async def record_run(self, run: pb.Run) -> pb.Run:
        """Create or update an experiment run (an empty run_id gets one assigned)."""
        return await self._call(self._stub.RecordRun, pb.RecordRunRequest(run=run))

    async def list_runs(self, model_name: str = "", limit: int = 100) -> list[pb.Run]:
        """Runs, most recently recorded first."""
        response = await self._call(
            self._stub.ListRuns, pb.ListRunsRequest(model_name=model_name, limit=limit)
        )
        return list(response.runs)

    async def get_run(self, run_id: str) -> pb.Run:
        return await self._call(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))

    # --- Lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
