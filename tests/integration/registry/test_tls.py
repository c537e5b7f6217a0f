"""The registry over TLS and mutual TLS, with real certificates, against real clients: the token
then never crosses the network in the clear, and a client the server cannot verify (or that
cannot verify the server) gets no answer at all."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from driftline.kit.errors import Unavailable
from driftline.kit.registry_client import RegistryClient
from driftline.kit.settings import RegistryTlsSettings
from driftline.kit.testing import Authority, certificate_expiry
from driftline.registry.v1 import registry_pb2 as pb
from driftline.registry.v1 import registry_pb2_grpc
from driftline.services.registry import testing

from .conftest import TOKEN

pytestmark = pytest.mark.integration

HEALTHCHECK = Path(__file__).resolve().parents[3] / "deploy" / "docker" / "healthcheck.py"


async def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` off the event loop, which serves the registry under test meanwhile."""
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def backend(tmp_path: Path) -> dict[str, Any]:
    """TLS is the transport's business: one database is enough."""
    return {"database_url": f"sqlite:///{tmp_path / 'registry.db'}"}


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Authority]:
    """The platform's CA, and a stranger's."""
    return Authority(tmp_path, "platform"), Authority(tmp_path, "stranger")


def _client_tls(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> RegistryTlsSettings:
    return RegistryTlsSettings(tls=True, ca_file=ca, client_cert_file=cert, client_key_file=key)


async def _registers(address: str, tls: RegistryTlsSettings | None) -> int:
    async with RegistryClient(address, TOKEN, timeout_s=5, tls=tls) as client:
        registered = await client.register(testing.register_request())
        return registered.version


async def test_a_tls_registry_serves_clients_that_trust_its_ca_and_no_one_else(start_registry, pki):
    platform, stranger = pki
    server = platform.issue("registry")
    _, address = await start_registry(tls_cert_file=server.cert, tls_key_file=server.key)
    served = x509.load_pem_x509_certificate(server.cert.read_bytes())
    expiry = certificate_expiry("grpc")
    assert expiry == served.not_valid_after_utc.timestamp()  # for the alert

    assert await _registers(address, _client_tls(platform.ca_file)) == 1

    with pytest.raises(Unavailable):  # plaintext against a TLS port: no answer, and no token sent
        await _registers(address, None)
    with pytest.raises(Unavailable):  # a server certificate it cannot verify
        await _registers(address, _client_tls(stranger.ca_file))

    async with RegistryClient(address, timeout_s=5, tls=_client_tls(platform.ca_file)) as reader:
        assert [v.version for v in await reader.list_versions("fraud")] == [1]


async def test_a_mutual_tls_registry_wants_a_client_certificate_its_ca_signed(start_registry, pki):
    platform, stranger = pki
    server = platform.issue("registry")
    _, address = await start_registry(
        tls_cert_file=server.cert, tls_key_file=server.key, tls_client_ca_file=platform.ca_file
    )
    trainer = platform.issue("trainer")
    impostor = stranger.issue("trainer")

    assert await _registers(address, _client_tls(platform.ca_file, trainer.cert, trainer.key)) == 1
    with pytest.raises(Unavailable):
        await _registers(address, _client_tls(platform.ca_file))  # no client certificate
    with pytest.raises(Unavailable):
        await _registers(address, _client_tls(platform.ca_file, impostor.cert, impostor.key))

    # The container health check (docker-compose.yml) probes it with the same files.
    probe = [sys.executable, str(HEALTHCHECK), "grpc", address, "--ca", str(platform.ca_file)]
    assert (await _run(probe)).returncode == 1  # no client certificate: no answer
    assert (await _run([*probe, "--cert", str(trainer.cert), "--key", str(trainer.key)])).returncode == 0
    misused = [sys.executable, str(HEALTHCHECK), "grpc", address, "--cert", str(trainer.cert)]
    assert (await _run(misused)).returncode == 2  # a certificate needs its key and a CA

    # A plain grpc client with the same credentials: nothing Driftline-specific about the TLS.
    credentials = grpc.ssl_channel_credentials(
        platform.ca_file.read_bytes(), trainer.key.read_bytes(), trainer.cert.read_bytes()
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        found = await stub.ListModelVersions(pb.ListModelVersionsRequest(name="fraud"), timeout=5)
        assert [v.version for v in found.versions] == [1]
