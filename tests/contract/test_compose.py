"""docker-compose.yml, which no machine here can run, agrees with the code it starts: every
service command names a module that exists, and no DRIFTLINE_* variable it sets goes unread (a
misspelt or stale one is silently ignored). The services share one block of variables, so a
shared one needs one reader among them; one a service sets for itself, that service.

And it loads as `docker compose` would load it: deploy/tools/composecheck runs compose-go, the
library docker compose is built on (schema, .env interpolation, references between services,
volumes and networks), and must refuse files broken in each of those ways."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
# The settings class each Python service of the compose file builds at start.
SETTINGS = {
    "ingestion": "driftline.services.ingestion.config:Settings",
    "features": "driftline.services.features.config:Settings",
    "registry": "driftline.services.registry.config:Settings",
    "inference": "driftline.services.inference.config:Settings",
    "drift": "driftline.services.drift.config:Settings",
    "trainer": "driftline.services.trainer.config:Settings",
    "topics": "driftline.kit.settings:KafkaSettings",
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]  # type: ignore[no-any-return]


def _shared() -> dict[str, str]:
    """The variables every service gets from the ``x-service`` block."""
    return _compose()["x-service"]["environment"]  # type: ignore[no-any-return]


def _class(path: str) -> type[BaseSettings]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every variable a settings class reads, its nested settings' included (upper case)."""
    names: set[str] = set()
    for field in settings.__fields__.values():
        names |= {n.upper() for n in field.field_info.extra.get("env_names", ())}
        if isinstance(field.type_, type) and issubclass(field.type_, BaseSettings):
            names |= env_names(field.type_)
    return names


def test_every_python_service_has_its_settings_listed_here():
    python = {name for name, spec in _services().items() if (spec.get("command") or [""])[0] == "python"}
    assert python == set(SETTINGS)


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_the_command_names_a_module_that_exists(service):
    command = _services()[service]["command"]
    assert command[:2] == ["python", "-m"]
    assert importlib.util.find_spec(command[2]) is not None, command[2]


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_variable_a_service_sets_for_itself_is_read_by_it(service):
    environment = _services()[service].get("environment") or {}
    shared = _shared()
    own = {k for k, v in environment.items() if k.startswith("DRIFTLINE_") and shared.get(k) != v}
    unknown = own - env_names(_class(SETTINGS[service]))
    assert not unknown, f"{service} sets variables its settings never read: {sorted(unknown)}"


def test_every_shared_variable_is_read_by_a_service():
    read = set().union(*(env_names(_class(path)) for path in SETTINGS.values()))
    unread = {k for k in _shared() if k.startswith("DRIFTLINE_")} - read
    assert not unread, f"no service reads {sorted(unread)}"


def _load(deploy_tool: Callable[..., subprocess.CompletedProcess[str]], project: Path) -> Any:
    return deploy_tool("composecheck", project, project / "docker-compose.yml")


def test_the_compose_file_loads_as_docker_compose_loads_it(deploy_tool: Any) -> None:
    result = _load(deploy_tool, ROOT)
    assert result.returncode == 0, result.stderr
    project = json.loads(result.stdout)
    assert set(project["services"]) == set(_services())
    for name, service in project["services"].items():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond the loopback"
        for volume in service.get("volumes") or []:
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts {volume['source']}, which is not here"
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build["dockerfile"]).is_file(), name


def _broken_dependency(compose: dict[str, Any]) -> None:
    compose["services"]["ingestion"]["depends_on"]["nosuch"] = {"condition": "service_started"}


def _misspelt_key(compose: dict[str, Any]) -> None:
    compose["services"]["ingestion"]["restrat"] = "always"


def _unset_variable(compose: dict[str, Any]) -> None:
    compose["services"]["ingestion"]["environment"]["DRIFTLINE_X"] = "${DRIFTLINE_SET_NOWHERE}"


def _undeclared_volume(compose: dict[str, Any]) -> None:
    compose["services"]["redis"]["volumes"] = ["undeclared:/data"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_broken_dependency, "nosuch"),
        (_misspelt_key, "restrat"),
        (_unset_variable, "DRIFTLINE_SET_NOWHERE"),
        (_undeclared_volume, "undeclared"),
    ],
)
def test_composecheck_refuses_a_broken_compose_file(
    deploy_tool: Any, tmp_path: Path, breakage: Callable[[dict[str, Any]], None], message: str
) -> None:
    compose = copy.deepcopy(_compose())
    breakage(compose)
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(compose, sort_keys=False))
    shutil.copy(ROOT / ".env", tmp_path / ".env")
    result = _load(deploy_tool, tmp_path)
    assert result.returncode == 1, result.stdout[:500]
    assert message in result.stderr
