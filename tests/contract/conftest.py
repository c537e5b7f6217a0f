"""The deploy checkers (deploy/tools, Go), built once per session for the contract tests."""

from __future__ import annotations

import shutil
import subprocess
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
