"""The local stack's listening ports stay out of the kernel's ephemeral port range."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Linux's default ``net.ipv4.ip_local_port_range``: outgoing connections take local ports here.
EPHEMERAL = range(32768, 61000)


def env_ports() -> dict[str, int]:
    ports = {}
    for line in (ROOT / ".env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.endswith("_PORT") and not name.startswith("#"):
            ports[name] = int(value)
    return ports


def test_every_listening_port_is_outside_the_ephemeral_range() -> None:
    ports = env_ports()
    assert {"KAFKA_PORT", "REDIS_PORT", "REGISTRY_GRPC_PORT", "INFERENCE_GRPC_PORT"} <= set(ports)
    assert {name: port for name, port in ports.items() if port in EPHEMERAL} == {}


def test_the_services_default_to_the_ports_in_env() -> None:
    from driftline.services.inference.config import Settings as InferenceSettings
    from driftline.services.registry.config import Settings as RegistrySettings

    ports = env_ports()
    assert RegistrySettings().port == ports["REGISTRY_GRPC_PORT"]
    assert InferenceSettings().grpc.port == ports["INFERENCE_GRPC_PORT"]
    assert InferenceSettings().data_plane_metrics_port == ports["INFERENCE_DATA_PLANE_METRICS_PORT"]
