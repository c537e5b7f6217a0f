"""The deploy checkers (deploy/tools, Go), built once per session for the contract tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "deploy" / "tools"


@pytest.fixture(scope="session")
def deploy_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the ``composecheck`` and ``dockerfilecheck`` binaries."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("go (1.24+) is not on PATH: it builds deploy/tools", pytrace=False)
    out = tmp_path_factory.mktemp("deploy-tools")
    subprocess.run([go, "build", "-o", f"{out}/", "./..."], cwd=TOOLS, check=True, timeout=900)
    return out


#: Runs one of the tools with its arguments: ``deploy_tool("composecheck", project, file)``.
DeployTool = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def deploy_tool(deploy_tools: Path) -> DeployTool:
    def run(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [str(deploy_tools / name), *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    return run
