"""deploy/docker/Dockerfile, which no machine here can build, reads as BuildKit reads it:
deploy/tools/dockerfilecheck runs BuildKit's parser and linter, and checks that stages, ARGs
and the build context's files are there for every instruction. It must refuse Dockerfiles
broken in each of those ways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def _check(deploy_tool: Any, dockerfile: Path) -> Any:
    return deploy_tool("dockerfilecheck", ROOT, dockerfile)


def test_the_dockerfile_reads_as_buildkit_reads_it(deploy_tool: Any) -> None:
    result = _check(deploy_tool, DOCKERFILE)
    assert result.returncode == 0, result.stderr
    stages = {s["name"]: s for s in json.loads(result.stdout)["stages"]}
    # The image compose runs is the last stage, and it holds the built environment.
    assert list(stages)[-1] == "runtime"
    assert "COPY --from=build /opt/venv /opt/venv" in DOCKERFILE.read_text()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("deploy/docker/healthcheck.py", "deploy/docker/no_such_file.py", "not in the build context"),
        ("COPY --from=rust /usr/local/cargo", "COPY --from=rusty /usr/local/cargo", "--from=rusty"),
        ("FROM ${RUST_IMAGE} AS rust", "FROM ${RUST_IMAGE} as rust", "FromAsCasing"),
        ("source=uv.lock,target=uv.lock", "source=bench/ingestion.py,target=uv.lock", "excluded"),
        ("ARG RUST_IMAGE=rust:1.95-slim-bookworm", "ARG RUST_IMAGE", "RUST_IMAGE has no default"),
    ],
)
def test_dockerfilecheck_refuses_a_broken_dockerfile(
    deploy_tool: Any, tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile changed: {old!r} is gone; update this case"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new, 1))
    shutil.copy(DOCKERFILE.with_name("Dockerfile.dockerignore"), tmp_path / "Dockerfile.dockerignore")
    result = _check(deploy_tool, broken)
    assert result.returncode == 1, result.stdout[:500]
    assert message in result.stderr
