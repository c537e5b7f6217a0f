"""Every refused input over the wire, with its gRPC status, on real SQLite and PostgreSQL; and a
tampered artifact or audit log detected on the real databases."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import text, update

from driftline.registry.v1 import registry_pb2 as pb
from driftline.registry.v1 import registry_pb2_grpc
from driftline.services.registry import testing
from driftline.services.registry.store.schema import audit

from .conftest import TOKEN

pytestmark = pytest.mark.integration

AUTH = (("authorization", f"Bearer {TOKEN}"),)
LIMIT = 20_000

CASES = {
    "missing-token": (None, {}, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"),
    "wrong-token": ((("authorization", "Bearer guess"),), {}, grpc.StatusCode.UNAUTHENTICATED, "invalid"),
    "basic-auth": (
        (("authorization", "Basic dXNlcjpwYXNz"),),
        {},
        grpc.StatusCode.UNAUTHENTICATED,
        "missing",
    ),
    "dotdot-name": (AUTH, {"name": "../../etc/cron.d/x"}, grpc.StatusCode.INVALID_ARGUMENT, "'..'"),
    "encoded-name": (AUTH, {"name": "%2e%2e%2fetc"}, grpc.StatusCode.INVALID_ARGUMENT, "percent"),
    "double-encoded": (AUTH, {"name": "%252e%252e"}, grpc.StatusCode.INVALID_ARGUMENT, "percent"),
    "unicode-dots": (AUTH, {"name": "\uff0e\uff0e"}, grpc.StatusCode.INVALID_ARGUMENT, "non-ASCII"),
    "absolute-name": (AUTH, {"name": "/etc/passwd"}, grpc.StatusCode.INVALID_ARGUMENT, "absolute"),
    "nul-name": (AUTH, {"name": "fraud\x00.onnx"}, grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
    "pickle": (AUTH, {"artifact": testing.pickle_bytes()}, grpc.StatusCode.INVALID_ARGUMENT, "pickle"),
    "torch": (AUTH, {"artifact": testing.torch_zip_bytes()}, grpc.StatusCode.INVALID_ARGUMENT, "torch"),
    "joblib": (AUTH, {"artifact": testing.joblib_bytes()}, grpc.StatusCode.INVALID_ARGUMENT, "joblib"),
    "external-data": (
        AUTH,
        {"artifact": testing.external_data_model()},
        grpc.StatusCode.INVALID_ARGUMENT,
        "external data",
    ),
    "custom-op": (AUTH, {"artifact": testing.custom_op_model()}, grpc.StatusCode.INVALID_ARGUMENT, "custom"),
    "oversized": (
        AUTH,
        {"artifact": testing.large_model(LIMIT // 2)},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit",
    ),
    "corrupt": (AUTH, {"artifact": testing.corrupt_bytes()}, grpc.StatusCode.INVALID_ARGUMENT, "not a valid"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_registration_gets_its_status_and_changes_nothing(start_registry, case):
    metadata, overrides, status, message = CASES[case]
    app, address = await start_registry(max_artifact_bytes=LIMIT)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RegisterModelVersion(testing.register_request(**overrides), metadata=metadata)
        assert caught.value.code() == status
        assert message in caught.value.details()
        # The process is still up and unchanged.
        listed = await stub.ListModelVersions(pb.ListModelVersionsRequest())
        assert list(listed.versions) == []
        assert (await stub.VerifyAudit(pb.VerifyAuditRequest())).records == 0
    assert app.outbox.pending_count() == 0


READS = {
    "GetModelVersion",
    "ListModelVersions",
    "GetArtifact",
    "ResolveAliasAt",
    "ListAudit",
    "VerifyAudit",
    "ListRuns",
    "GetRun",
}


async def test_every_write_rpc_needs_the_token(start_registry):
    _, address = await start_registry()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await stub.RegisterModelVersion(testing.register_request(), metadata=AUTH)
        writes = {
            "SetAlias": pb.SetAliasRequest(name="fraud", alias="champion", version=1),
            "DeleteAlias": pb.DeleteAliasRequest(name="fraud", alias="champion", expected_version=1),
            "ArchiveModelVersion": pb.ArchiveModelVersionRequest(name="fraud", version=1),
            "LockModel": pb.LockModelRequest(name="fraud", owner="me"),
            "UnlockModel": pb.UnlockModelRequest(name="fraud", owner="me"),
            "RecordRun": pb.RecordRunRequest(run=pb.Run(run_id="r", model_name="fraud")),
            "RegisterModelVersion": testing.register_request(),
        }
        # Every RPC is a read or one of these writes: a new RPC must say which it is.
        every = set(pb.DESCRIPTOR.services_by_name["RegistryService"].methods_by_name)
        assert every - set(writes) == READS
        for name, request in writes.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(stub, name)(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert (await stub.GetModelVersion(pb.GetModelVersionRequest(name="fraud"))).version == 1


async def test_tampered_artifact_is_refused_with_data_loss(start_registry):
    app, address = await start_registry()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        registered = await stub.RegisterModelVersion(testing.register_request(), metadata=AUTH)
        intact = await stub.GetArtifact(pb.GetArtifactRequest(name="fraud", version=1))
        assert intact.content == testing.tiny_model()

        path = app.artifacts.path_for(registered.artifact_sha256)
        path.chmod(0o644)
        path.write_bytes(testing.tiny_model(weights=(100.0, 100.0, 100.0)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetArtifact(pb.GetArtifactRequest(name="fraud", version=1))
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS

        path.unlink()
        path.symlink_to(app.settings.data_dir / "elsewhere.onnx")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetArtifact(pb.GetArtifactRequest(name="fraud", version=1))
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS
        assert "symlink" in caught.value.details()


async def test_tampered_audit_log_is_detected(start_registry):
    app, address = await start_registry()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await stub.RegisterModelVersion(testing.register_request(), metadata=AUTH)
        await stub.SetAlias(
            pb.SetAliasRequest(name="fraud", alias="champion", version=1, reason="go"), metadata=AUTH
        )
        await stub.SetAlias(
            pb.SetAliasRequest(name="fraud", alias="canary", version=1, reason="try"), metadata=AUTH
        )
        assert (await stub.VerifyAudit(pb.VerifyAuditRequest())).ok

        # The database itself refuses edits...
        with pytest.raises(Exception, match="append-only"), app.database.write() as conn:
            conn.execute(update(audit).where(audit.c.seq == 2).values(actor="mallory"))
        # ...and when someone with enough rights gets past that, the chain still tells.
        with app.database.write() as conn:
            if app.database.dialect == "postgresql":
                conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            else:
                conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(update(audit).where(audit.c.seq == 2).values(reason="routine"))
        result = await stub.VerifyAudit(pb.VerifyAuditRequest())
        assert (result.ok, result.broken_at, result.records) == (False, 2, 1)
