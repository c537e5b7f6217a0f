"""gRPC adapter: authenticate writes, convert messages, call the core in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import grpc

from driftline.kit.codec import from_timestamp
from driftline.kit.errors import InvalidArgument, grpc_errors
from driftline.kit.grpc import bearer_token
from driftline.registry.v1 import registry_pb2 as pb
from driftline.registry.v1 import registry_pb2_grpc as pb_grpc
from driftline.services.registry import convert
from driftline.services.registry.core import Registry
from driftline.services.registry.security import TokenAuthenticator

T = TypeVar("T")

#: Metadata key a client may set to name itself; recorded after its token's actor name.
ACTOR_HEADER = "x-driftline-actor"


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """Every write RPC requires ``authorization: Bearer <token>``; reads do when configured."""

    def __init__(
        self, registry: Registry, authenticator: TokenAuthenticator, *, require_token_for_reads: bool = False
    ) -> None:
        self._registry = registry
        self._auth = authenticator
        self._reads_need_token = require_token_for_reads

    def _actor(self, context: grpc.aio.ServicerContext) -> str:
        declared = None
        for key, value in context.invocation_metadata() or ():
            if key.lower() == ACTOR_HEADER:
                declared = value.decode() if isinstance(value, bytes) else value
        return self._auth.authenticate(bearer_token(context), declared)

    def _reader(self, context: grpc.aio.ServicerContext) -> None:
        if self._reads_need_token:
            self._actor(context)

    @staticmethod
    async def _run(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        # The core is synchronous (SQL, hashing, ONNX parsing): keep it off the event loop.
        return await asyncio.to_thread(fn, *args, **kwargs)

    @grpc_errors
    async def RegisterModelVersion(  # noqa: N802 - gRPC method name
        self, request: pb.RegisterModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelVersion:
        actor = self._actor(context)
        registered = await self._run(self._registry.register, convert.new_version_from_pb(request), actor)
        return convert.version_to_pb(registered)

    @grpc_errors
    async def GetModelVersion(  # noqa: N802 - gRPC method name
        self, request: pb.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelVersion:
        self._reader(context)
        selector = request.WhichOneof("selector")
        found = await self._run(
            self._registry.get_version,
            request.name,
            version=request.version if selector == "version" else 0,
            alias=request.alias if selector == "alias" else "",
            include_reference=not request.omit_reference,
        )
        return convert.version_to_pb(found)

    @grpc_errors
    async def ListModelVersions(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelVersionsResponse:
        self._reader(context)
        found = await self._run(self._registry.list_versions, request.name)
        return pb.ListModelVersionsResponse(versions=[convert.version_to_pb(v) for v in found])

    @grpc_errors
    async def GetArtifact(  # noqa: N802 - gRPC method name
        self, request: pb.GetArtifactRequest, context: grpc.aio.ServicerContext
    ) -> pb.Artifact:
        self._reader(context)
        digest, content = await self._run(self._registry.get_artifact, request.name, request.version)
        return pb.Artifact(name=request.name, version=request.version, sha256=digest, content=content)

    @grpc_errors
    async def ArchiveModelVersion(  # noqa: N802 - gRPC method name
        self, request: pb.ArchiveModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelVersion:
        actor = self._actor(context)
        archived = await self._run(
            self._registry.archive,
            request.name,
            request.version,
            reason=request.reason,
            lock_owner=request.lock_owner,
            actor=actor,
        )
        return convert.version_to_pb(archived)

    @grpc_errors
    async def SetAlias(  # noqa: N802 - gRPC method name
        self, request: pb.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.AliasChange:
        actor = self._actor(context)
        change = await self._run(
            self._registry.set_alias,
            request.name,
            request.alias,
            request.version,
            expected_version=request.expected_version,
            reason=request.reason,
            lock_owner=request.lock_owner,
            actor=actor,
        )
        return convert.alias_change_to_pb(change)

    @grpc_errors
    async def DeleteAlias(  # noqa: N802 - gRPC method name
        self, request: pb.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.AliasChange:
        actor = self._actor(context)
        change = await self._run(
            self._registry.delete_alias,
            request.name,
            request.alias,
            expected_version=request.expected_version,
            reason=request.reason,
            lock_owner=request.lock_owner,
            actor=actor,
        )
        return convert.alias_change_to_pb(change)

    @grpc_errors
    async def ResolveAliasAt(  # noqa: N802 - gRPC method name
        self, request: pb.ResolveAliasAtRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveAliasAtResponse:
        self._reader(context)
        if not request.HasField("at"):
            raise InvalidArgument("at is required")
        version = await self._run(
            self._registry.resolve_alias_at, request.name, request.alias, from_timestamp(request.at)
        )
        return pb.ResolveAliasAtResponse(version=version)

    @grpc_errors
    async def LockModel(  # noqa: N802 - gRPC method name
        self, request: pb.LockModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelLock:
        actor = self._actor(context)
        lock = await self._run(
            self._registry.lock, request.name, request.owner, reason=request.reason, actor=actor
        )
        return convert.lock_to_pb(lock)

    @grpc_errors
    async def UnlockModel(  # noqa: N802 - gRPC method name
        self, request: pb.UnlockModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelLock:
        actor = self._actor(context)
        lock = await self._run(
            self._registry.unlock,
            request.name,
            request.owner,
            reason=request.reason,
            actor=actor,
            force=request.force,
        )
        return convert.lock_to_pb(lock)

    @grpc_errors
    async def ListAudit(  # noqa: N802 - gRPC method name
        self, request: pb.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditResponse:
        self._reader(context)
        records = await self._run(
            self._registry.list_audit, request.model_name, request.after_seq, request.limit
        )
        return pb.ListAuditResponse(records=[convert.audit_to_pb(r) for r in records])

    @grpc_errors
    async def VerifyAudit(  # noqa: N802 - gRPC method name
        self, request: pb.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyAuditResponse:
        self._reader(context)
        return convert.verification_to_pb(await self._run(self._registry.verify_audit))

    @grpc_errors
    async def RecordRun(self, request: pb.RecordRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:  # noqa: N802 - gRPC method name
        actor = self._actor(context)
        run = await self._run(self._registry.record_run, convert.run_from_pb(request.run), actor)
        return convert.run_to_pb(run)

    @grpc_errors
    async def ListRuns(  # noqa: N802 - gRPC method name
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        self._reader(context)
        runs = await self._run(self._registry.list_runs, request.model_name, request.limit)
        return pb.ListRunsResponse(runs=[convert.run_to_pb(r) for r in runs])

    @grpc_errors
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:  # noqa: N802 - gRPC method name
        self._reader(context)
        return convert.run_to_pb(await self._run(self._registry.get_run, request.run_id))
