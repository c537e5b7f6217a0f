"""The gRPC service in-process (SQLite, fake publisher) driven through the kit's RegistryClient:
the client API, its error mapping, authentication, and statuses of refused inputs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from driftline.kit.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from driftline.kit.registry_client import RegistryClient, RegistryClientSettings
from driftline.kit.settings import MetricsSettings
from driftline.registry.v1 import registry_pb2 as pb
from driftline.registry.v1 import registry_pb2_grpc as pb_grpc
from driftline.services.registry import testing
from driftline.services.registry.app import SERVICE_NAME, RegistryApp
from driftline.services.registry.config import Settings

TOKEN = "s3cret-token"


class Publisher:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic, value, key=None, headers=None):
        self.sent.append(value)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(None)
        return future


def _settings(tmp_path, **overrides) -> Settings:
    values = {
        "port": 0,
        "data_dir": tmp_path,
        "token": SecretStr(TOKEN),
        "max_artifact_bytes": 20_000,
        "outbox_poll_interval_s": 0.05,
        "metrics": MetricsSettings(enabled=False),
        "drain_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def service(tmp_path):
    publisher = Publisher()
    app = RegistryApp(_settings(tmp_path), publisher=publisher)
    port = await app.start()
    yield app, f"127.0.0.1:{port}", publisher
    await app.stop()


@pytest.fixture
async def client(service):
    _, address, _ = service
    async with RegistryClient(address, TOKEN, actor="tests") as c:
        yield c


@pytest.fixture
async def anonymous(service):
    _, address, _ = service
    async with RegistryClient(address, None) as c:
        yield c


async def test_health_reports_serving_once_started(service):
    _, address, _ = service
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_register_then_read_back_through_the_client(client):
    registered = await client.register(testing.register_request())
    assert registered.version == 1
    assert registered.created_by == "default:tests"
    assert registered.signature.inputs[0].datatype == "FP32"

    by_number = await client.get_version("fraud", version=1)
    assert by_number.artifact_sha256 == registered.artifact_sha256
    assert not by_number.HasField("reference")
    with_reference = await client.get_version("fraud", omit_reference=False)
    assert list(with_reference.reference.scores) == [0.2, 0.8]
    assert [v.version for v in await client.list_versions("fraud")] == [1]
    content = await client.fetch_artifact("fraud", 1, expected_sha256=registered.artifact_sha256)
    assert content == testing.tiny_model()


async def test_alias_compare_and_swap_through_the_client(client):
    await client.register(testing.register_request())
    await client.register(testing.register_request())
    change = await client.set_alias("fraud", "champion", 1, 0, "first")
    assert (change.previous_version, change.version, change.audit_seq) == (0, 1, 3)
    with pytest.raises(Aborted):
        await client.set_alias("fraud", "champion", 2, 0, "stale read")
    await client.set_alias("fraud", "champion", 2, 1, "better")
    assert (await client.get_version("fraud", alias="champion")).version == 2
    deleted = await client.delete_alias("fraud", "champion", 2, "rollback")
    assert deleted.version == 0
    with pytest.raises(NotFound):
        await client.get_version("fraud", alias="champion")
    at = datetime.now(UTC) + timedelta(hours=1)
    assert await client.resolve_alias_at("fraud", "champion", at) == 0
    records = await client.list_audit("fraud")
    assert [r.action for r in records][-3:] == ["alias_set", "alias_set", "alias_deleted"]
    assert (await client.verify_audit()).ok


async def test_lock_through_the_client(client):
    await client.register(testing.register_request())
    assert (await client.lock("fraud", "deploy-1", "freeze")).locked
    with pytest.raises(FailedPrecondition):
        await client.set_alias("fraud", "champion", 1, 0)
    await client.set_alias("fraud", "champion", 1, 0, lock_owner="deploy-1")
    assert not (await client.unlock("fraud", "deploy-1")).locked


async def test_only_the_token_that_locked_a_model_moves_its_aliases(tmp_path):
    tokens = {"ops": SecretStr("ops-token"), "trainer": SecretStr("trainer-token")}
    app = RegistryApp(_settings(tmp_path, token=None, tokens=tokens), publisher=Publisher())
    address = f"127.0.0.1:{await app.start()}"
    try:
        async with (
            RegistryClient(address, "ops-token") as ops,
            RegistryClient(address, "trainer-token") as trainer,
        ):
            await ops.register(testing.register_request())
            await ops.lock("fraud", "freeze", "incident 12")
            with pytest.raises(PermissionDenied, match="token of ops"):
                await trainer.set_alias("fraud", "champion", 1, 0, lock_owner="freeze")
            with pytest.raises(PermissionDenied):
                await trainer.unlock("fraud", "freeze")
            await ops.set_alias("fraud", "champion", 1, 0, lock_owner="freeze")
            assert not (await ops.unlock("fraud", "freeze")).locked
    finally:
        await app.stop()


async def test_a_lock_breaker_forces_open_another_tokens_lock(tmp_path):
    tokens = {name: SecretStr(f"{name}-token") for name in ("ops", "trainer", "admin")}
    settings = _settings(tmp_path, token=None, tokens=tokens, lock_breakers=["admin"])
    app = RegistryApp(settings, publisher=Publisher())
    address = f"127.0.0.1:{await app.start()}"
    try:
        async with (
            RegistryClient(address, "ops-token") as ops,
            RegistryClient(address, "trainer-token") as trainer,
            RegistryClient(address, "admin-token") as admin,
        ):
            await ops.register(testing.register_request())
            await ops.lock("fraud", "freeze", "incident 12")
            with pytest.raises(PermissionDenied, match="not one"):
                await trainer.unlock("fraud", "freeze", "mine", force=True)
            with pytest.raises(InvalidArgument, match="reason"):
                await admin.unlock("fraud", "freeze", force=True)
            with pytest.raises(PermissionDenied, match="token of ops"):
                await admin.unlock("fraud", "freeze", "no force")

            assert not (await admin.unlock("fraud", "freeze", "ops is away", force=True)).locked

            await trainer.set_alias("fraud", "champion", 1, 0)
            forced = (await admin.list_audit("fraud"))[-2]
            assert (forced.action, forced.actor, forced.reason) == ("unlocked", "admin", "ops is away")
            assert json.loads(forced.after_json)["forced"] is True
    finally:
        await app.stop()


def _register_request(bias: float) -> pb.RegisterModelVersionRequest:
    return testing.register_request(artifact=testing.tiny_model(bias=bias))


async def test_archive_through_the_client(client):
    await client.register(_register_request(0.1))
    await client.register(_register_request(0.2))
    await client.set_alias("fraud", "champion", 2, 0)
    with pytest.raises(FailedPrecondition, match="champion of fraud point at v2"):
        await client.archive("fraud", 2)

    archived = await client.archive("fraud", 1, "lost the gate")

    assert archived.HasField("archived_at")
    assert not archived.HasField("reference")
    listed = await client.list_versions("fraud")
    assert [v.HasField("archived_at") for v in listed] == [True, False]
    with pytest.raises(FailedPrecondition, match="archived"):
        await client.fetch_artifact("fraud", 1)
    with pytest.raises(FailedPrecondition, match="archived"):
        await client.set_alias("fraud", "champion", 1, 2)
    with pytest.raises(NotFound):
        await client.archive("fraud", 3)
    assert (await client.list_audit("fraud"))[-1].action == "version_archived"


async def test_the_registry_collects_archived_artifacts_on_its_own(tmp_path):
    settings = _settings(tmp_path, artifact_gc_interval_s=0.05, artifact_gc_grace_s=0)
    app = RegistryApp(settings, publisher=Publisher())
    address = f"127.0.0.1:{await app.start()}"
    try:
        async with RegistryClient(address, TOKEN) as client:
            old = await client.register(_register_request(0.1))
            await client.register(_register_request(0.2))
            await asyncio.sleep(0.2)
            assert app.artifacts.exists(old.artifact_sha256)  # live: kept, round after round
            await client.archive("fraud", 1)
            for _ in range(100):
                if not app.artifacts.exists(old.artifact_sha256):
                    break
                await asyncio.sleep(0.05)
            assert not app.artifacts.exists(old.artifact_sha256)
            assert len(await client.fetch_artifact("fraud", 2)) > 0
    finally:
        await app.stop()


async def test_runs_round_trip_with_times(client):
    started = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
    run = pb.Run(
        run_id="run-1",
        model_name="fraud",
        params={"depth": "6"},
        metrics={"auc": 0.93},
        outcome=pb.RUN_OUTCOME_REJECTED,
        outcome_reason="worse than champion",
        trigger="drift",
    )
    run.started_at.FromDatetime(started)
    recorded = await client.record_run(run)
    assert recorded == run
    assert (await client.get_run("run-1")).started_at.ToDatetime(tzinfo=UTC) == started
    assert [r.run_id for r in await client.list_runs("fraud")] == ["run-1"]
    with pytest.raises(NotFound):
        await client.get_run("run-2")


async def test_every_run_outcome_survives_the_store(client):
    for number in pb.RunOutcome.values():
        run = pb.Run(run_id=f"run-{number}", model_name="fraud", outcome=number, outcome_reason="why")
        assert (await client.record_run(run)).outcome == number
        assert (await client.get_run(run.run_id)).outcome == number


async def test_every_write_needs_the_token(anonymous, client):
    await client.register(testing.register_request())
    writes = [
        anonymous.register(testing.register_request()),
        anonymous.set_alias("fraud", "champion", 1, 0),
        anonymous.delete_alias("fraud", "champion", 1),
        anonymous.lock("fraud", "me"),
        anonymous.unlock("fraud", "me"),
        anonymous.archive("fraud", 1),
        anonymous.record_run(pb.Run(run_id="r", model_name="fraud")),
    ]
    for write in writes:
        with pytest.raises(Unauthenticated):
            await write
    assert (await anonymous.get_version("fraud")).version == 1
    assert len(await anonymous.list_audit()) == 1


async def test_a_wrong_token_is_unauthenticated(service):
    _, address, _ = service
    async with RegistryClient(address, "not-the-token") as wrong:
        with pytest.raises(Unauthenticated, match="invalid"):
            await wrong.register(testing.register_request())


async def test_reads_can_require_the_token(tmp_path):
    app = RegistryApp(_settings(tmp_path, require_token_for_reads=True), publisher=Publisher())
    port = await app.start()
    try:
        async with RegistryClient(f"127.0.0.1:{port}", None) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.list_versions()
        async with RegistryClient(f"127.0.0.1:{port}", TOKEN) as authorised:
            assert await authorised.list_versions() == []
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"name": "../../etc/passwd"}, InvalidArgument),
        ({"name": "%2e%2e%2fetc"}, InvalidArgument),
        ({"name": "/abs"}, InvalidArgument),
        ({"artifact": testing.pickle_bytes()}, InvalidArgument),
        ({"artifact": testing.torch_zip_bytes()}, InvalidArgument),
        ({"artifact": testing.joblib_bytes()}, InvalidArgument),
        ({"artifact": testing.external_data_model()}, InvalidArgument),
        ({"artifact": testing.custom_op_model()}, InvalidArgument),
        ({"artifact": testing.corrupt_bytes()}, InvalidArgument),
        ({"artifact": testing.large_model(10_000)}, ResourceExhausted),
    ],
    ids=[
        "traversal",
        "encoded",
        "absolute",
        "pickle",
        "torch",
        "joblib",
        "external",
        "custom-op",
        "corrupt",
        "big",
    ],
)
async def test_refused_uploads_get_their_status(client, overrides, error):
    with pytest.raises(error):
        await client.register(testing.register_request(**overrides))
    assert await client.list_versions() == []


async def test_a_message_over_the_transport_limit_is_resource_exhausted(tmp_path):
    app = RegistryApp(_settings(tmp_path, max_message_bytes=10_000), publisher=Publisher())
    port = await app.start()
    try:
        async with RegistryClient(f"127.0.0.1:{port}", TOKEN) as c:
            with pytest.raises(ResourceExhausted):
                await c.register(testing.register_request(artifact=testing.large_model(5_000)))
    finally:
        await app.stop()


async def test_a_tampered_artifact_is_refused_with_data_loss(service, client):
    app, _, _ = service
    registered = await client.register(testing.register_request())
    path = app.artifacts.path_for(registered.artifact_sha256)
    path.chmod(0o644)
    path.write_bytes(testing.tiny_model(weights=(5.0, 5.0, 5.0)))
    with pytest.raises(DataLoss):
        await client.fetch_artifact("fraud", 1)


async def test_changes_are_relayed_as_model_events(service, client):
    _, _, publisher = service
    await client.register(testing.register_request())
    await client.set_alias("fraud", "champion", 1, 0)
    for _ in range(200):
        if len(publisher.sent) == 2:
            break
        await asyncio.sleep(0.02)
    events = [pb.ModelEvent.FromString(v) for v in publisher.sent]
    assert [e.type for e in events] == [pb.MODEL_EVENT_TYPE_VERSION_REGISTERED, pb.MODEL_EVENT_TYPE_ALIAS_SET]
    assert events[1].actor == "default:tests"


class _LyingRegistry(pb_grpc.RegistryServiceServicer):
    """Serves bytes that do not match the digest it claims."""

    async def GetArtifact(self, request, context):  # noqa: N802 - gRPC method name
        return pb.Artifact(name=request.name, version=request.version, sha256="0" * 64, content=b"evil")


async def test_client_verifies_the_artifact_digest_itself():
    server = grpc.aio.server()
    pb_grpc.add_RegistryServiceServicer_to_server(_LyingRegistry(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with RegistryClient(f"127.0.0.1:{port}") as c:
            with pytest.raises(DataLoss, match="sha256"):
                await c.fetch_artifact("fraud", 1)
    finally:
        await server.stop(None)


async def test_client_checks_the_expected_digest(client):
    await client.register(testing.register_request())
    with pytest.raises(DataLoss):
        await client.fetch_artifact("fraud", 1, expected_sha256="f" * 64)


async def test_client_settings_read_the_registry_environment(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_REGISTRY_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("DRIFTLINE_REGISTRY_TOKEN", "from-env")
    settings = RegistryClientSettings()
    assert settings.address == "10.0.0.1:1234"
    assert settings.token is not None
    assert settings.token.get_secret_value() == "from-env"
    client = RegistryClient.from_settings(settings)
    assert client.address == "10.0.0.1:1234"
    await client.close()


async def test_unreachable_registry_is_unavailable():
    from driftline.kit.errors import Unavailable

    async with RegistryClient("127.0.0.1:1", timeout_s=5) as c:
        with pytest.raises(Unavailable):
            await c.list_versions()
