from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftline.kit import tls as kit_tls
from driftline.kit.grpc import GrpcServer
from driftline.kit.settings import GrpcServerSettings, MetricsSettings
from driftline.kit.testing import Authority, CertificatePair, certificate_expiry
from driftline.kit.tls import CertificateFiles


@pytest.mark.parametrize(
    ("days_left", "logged"),
    [(90, []), (3, ["tls_certificate_expiring"]), (-1, ["tls_certificate_expired"])],
)
def test_a_tls_port_exports_when_its_certificate_ends_and_warns_when_that_is_near(
    tmp_path, monkeypatch, days_left, logged
):
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days_left)
    issued = Authority(tmp_path, "platform", not_after=not_after).issue("registry")
    with structlog.testing.capture_logs() as logs:
        # A fresh logger: the module's caches the configuration of its first use.
        monkeypatch.setattr(kit_tls, "log", structlog.get_logger(kit_tls.__name__))
        files = CertificateFiles(
            GrpcServerSettings(tls_cert_file=issued.cert, tls_key_file=issued.key), port=f"in-{days_left}"
        )
    assert [(e["event"], e["port"]) for e in logs] == [(event, f"in-{days_left}") for event in logged]
    files.export_expiry()
    # X.509 keeps whole seconds.
    assert certificate_expiry(f"in-{days_left}") == int(not_after.timestamp())


def test_each_port_exports_its_own_certificate(tmp_path):
    early = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC)
    late = datetime.datetime(2032, 1, 1, tzinfo=datetime.UTC)
    grpc_pair = Authority(tmp_path, "a", not_after=early).issue("svc")
    metrics_pair = Authority(tmp_path, "b", not_after=late).issue("svc")
    settings = GrpcServerSettings(tls_cert_file=grpc_pair.cert, tls_key_file=grpc_pair.key)
    CertificateFiles(settings, port="one").export_expiry()
    settings = MetricsSettings(tls_cert_file=metrics_pair.cert, tls_key_file=metrics_pair.key)
    CertificateFiles(settings, port="other").export_expiry()
    assert certificate_expiry("one") == early.timestamp()
    assert certificate_expiry("other") == late.timestamp()


@pytest.mark.parametrize("cls", [GrpcServerSettings, MetricsSettings])
def test_a_certificate_needs_its_key_and_a_client_ca_needs_both(tmp_path, cls):
    pair = Authority(tmp_path, "platform").issue("svc")
    prefix = cls.__config__.env_prefix
    with pytest.raises(ValueError, match=f"{prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE go together"):
        cls(tls_cert_file=pair.cert)
    with pytest.raises(ValueError, match=f"{prefix}TLS_CLIENT_CA_FILE needs"):
        cls(tls_client_ca_file=pair.cert)
    assert cls().tls_files() is None
    assert cls().tls_mode == "off"
    on = cls(tls_cert_file=pair.cert, tls_key_file=pair.key)
    assert on.tls_files() == {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    assert on.tls_mode == "on"
    mutual = cls(tls_cert_file=pair.cert, tls_key_file=pair.key, tls_client_ca_file=pair.cert)
    assert mutual.tls_files() == {
        "cert_file": str(pair.cert), "key_file": str(pair.key), "client_ca_file": str(pair.cert)
    }  # fmt: skip
    assert mutual.tls_mode == "mutual"


def _renew(target: CertificatePair, source: CertificatePair) -> None:
    """Write ``source`` over ``target``'s files, as a certificate manager renewing in place."""
    target.cert.write_bytes(source.cert.read_bytes())
    target.key.write_bytes(source.key.read_bytes())


async def _health(port: int, ca_file: Path) -> str:
    credentials = grpc.ssl_channel_credentials(ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_a_certificate_renewed_in_place_serves_from_the_next_connection_without_a_restart(tmp_path):
    old_ca = Authority(tmp_path, "old", not_after=datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC))
    new_ca = Authority(tmp_path, "new", not_after=datetime.datetime(2032, 1, 1, tzinfo=datetime.UTC))
    served = old_ca.issue("registry")
    server = GrpcServer(
        GrpcServerSettings(port=0, tls_cert_file=served.cert, tls_key_file=served.key), service_names=[]
    )
    port = await server.start()
    try:
        assert await _health(port, old_ca.ca_file) == "NOT_SERVING"
        assert certificate_expiry("grpc") == old_ca.not_after.timestamp()
        _renew(served, new_ca.issue("registry"))
        # A scrape sees the renewal first (the gauge checks the files too); still the next
        # connection gets the new certificate: only the new CA's clients trust it now.
        assert certificate_expiry("grpc") == new_ca.not_after.timestamp()
        assert await _health(port, new_ca.ca_file) == "NOT_SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _health(port, old_ca.ca_file)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert certificate_expiry("grpc") == new_ca.not_after.timestamp()
    finally:
        await server.stop()


async def test_a_half_renewed_pair_is_not_taken_and_the_last_good_one_serves_on(tmp_path, monkeypatch):
    authority = Authority(tmp_path, "platform")
    served = authority.issue("registry")
    server = GrpcServer(
        GrpcServerSettings(port=0, tls_cert_file=served.cert, tls_key_file=served.key), service_names=[]
    )
    port = await server.start()
    try:
        with structlog.testing.capture_logs() as logs:
            monkeypatch.setattr(kit_tls, "log", structlog.get_logger(kit_tls.__name__))
            renewed = authority.issue("renewed")
            served.cert.write_bytes(renewed.cert.read_bytes())  # its key: not yet
            assert await _health(port, authority.ca_file) == "NOT_SERVING"  # the old pair serves
            assert await _health(port, authority.ca_file) == "NOT_SERVING"
            served.key.write_bytes(renewed.key.read_bytes())  # the pair agrees again
            assert await _health(port, authority.ca_file) == "NOT_SERVING"
        events = [e["event"] for e in logs if e["event"].startswith("tls_certificate_")]
        # Refused once per change, not per connection; taken once the key followed.
        assert events == [
            "tls_certificate_not_reloaded",
            "tls_certificate_expiring",
            "tls_certificate_reloaded",
        ]
        refusal = next(e for e in logs if e["event"] == "tls_certificate_not_reloaded")
        assert "does not match the key" in refusal["error"]
    finally:
        await server.stop()


def test_certificate_files_that_disagree_at_start_are_refused(tmp_path):
    authority = Authority(tmp_path, "platform")
    one, other = authority.issue("a"), authority.issue("b")
    with pytest.raises(ValueError, match="does not match the key"):
        CertificateFiles(GrpcServerSettings(tls_cert_file=one.cert, tls_key_file=other.key), port="grpc")


async def test_a_client_ca_renewed_in_place_decides_from_the_next_connection(tmp_path):
    platform, successor = Authority(tmp_path, "platform"), Authority(tmp_path, "successor")
    served = platform.issue("registry")
    client_ca = tmp_path / "clients-ca.pem"
    client_ca.write_bytes(platform.ca_file.read_bytes())
    settings = GrpcServerSettings(
        port=0, tls_cert_file=served.cert, tls_key_file=served.key, tls_client_ca_file=client_ca
    )
    server = GrpcServer(settings, service_names=[])
    port = await server.start()

    async def health_with(pair: CertificatePair) -> str:
        ca = platform.ca_file.read_bytes()
        credentials = grpc.ssl_channel_credentials(ca, pair.key.read_bytes(), pair.cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    try:
        old_client, new_client = platform.issue("client"), successor.issue("client")
        assert await health_with(old_client) == "NOT_SERVING"
        client_ca.write_bytes(successor.ca_file.read_bytes())
        assert await health_with(new_client) == "NOT_SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_with(old_client)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()
