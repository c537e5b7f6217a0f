"""The RPC map in docs/architecture.md agrees with the protos, the servers and `.env`."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from driftline.services.inference import kserve, servicer
from driftline.services.registry import app as registry_app

ROOT = Path(__file__).resolve().parents[2]

#: The services each server registers, as its code names them.
SERVED = {
    "registry": {registry_app.SERVICE_NAME},
    "inference": {servicer.SERVICE_NAME, kserve.SERVICE_NAME},
}
#: Inference's compiled data plane (Rust): its control service, on a Unix socket only.
DATA_PLANE_MAIN = ROOT / "services" / "inference" / "dataplane" / "src" / "main.rs"
DATA_PLANE_SERVED = {"driftline.dataplane.v1.DataPlaneControl": "DataPlaneControlServer::new("}


def _doc_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## RPCs", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] != "standard" and cells[0].startswith("`"):
            rows.append(cells)
    return rows


def _proto_services() -> dict[str, list[str]]:
    """Every gRPC service the protos define: full name -> method names."""
    found = {}
    for path in sorted((ROOT / "proto").rglob("*.proto")):
        if "service " not in path.read_text():
            continue
        module = ".".join(path.relative_to(ROOT / "proto").with_suffix("").parts) + "_pb2"
        descriptor = importlib.import_module(module).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            found[service.full_name] = [m.name for m in service.methods]
    return found


def _env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_the_rpc_map_lists_every_service_the_protos_define_and_who_serves_it():
    protos = _proto_services()
    documented = {}
    for name_cell, package, served_by, _port in _doc_rows():
        name = re.match(r"`(\w+)`", name_cell).group(1)
        full = f"{package.strip('`')}.{name}"
        documented[full] = served_by
        if served_by == "inference data plane":
            registered = DATA_PLANE_SERVED[full] in DATA_PLANE_MAIN.read_text()
            assert registered, f"{full} is not registered by the data plane"
            continue
        assert full in SERVED[served_by], f"{full} is not registered by the {served_by} server"
        methods = re.search(r"\(([\w, ]+)\)", name_cell)
        if methods and "," in methods.group(1):
            assert [m.strip() for m in methods.group(1).split(",")] == protos[full], full
    assert set(documented) == set(protos)
    assert {s for names in SERVED.values() for s in names} | set(DATA_PLANE_SERVED) == set(protos)


def test_the_rpc_map_gives_the_ports_of_dot_env():
    env = _env()
    ports = {}
    for _name, _package, served_by, port in _doc_rows():
        if served_by == "inference data plane":
            assert "Unix socket" in port  # never a TCP port: loading a model names a file
            continue
        variable = re.search(r"`(\w+_GRPC_PORT)`", port)
        number = re.search(r"(\d+)$", port).group(1)
        if variable:
            assert env[variable.group(1)] == number, port
        ports.setdefault(served_by, set()).add(number)
    assert {k: len(v) for k, v in ports.items()} == {"registry": 1, "inference": 1}
    assert ports["inference"] == {env["INFERENCE_GRPC_PORT"]}
    assert ports["registry"] == {env["REGISTRY_GRPC_PORT"]}
