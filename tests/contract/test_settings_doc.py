"""docs/settings.md is what the services' Settings classes say, and every service's command line
answers ``--help`` and ``--settings`` from them: a setting added, renamed or re-described in code
and not in the doc fails here (``make settings-doc`` regenerates it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.kit.settings_reference import MASK, reference
from driftline.services.cli.settings import declared

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "settings.md"
SERVICES = declared()


def test_every_service_declares_its_settings():
    with_config = {p.parent.name for p in ROOT.glob("services/*/driftline/services/*/config.py")}
    assert set(SERVICES) == with_config


def test_the_settings_doc_is_generated_from_the_settings_classes(monkeypatch):
    monkeypatch.chdir(ROOT)  # path defaults are written relative to the checkout
    assert DOC.read_text() == reference(SERVICES), "docs/settings.md is stale: run `make settings-doc`"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_service_validates_and_prints_its_settings_without_starting(service):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env["DRIFTLINE_REGISTRY_TOKEN"] = "sentinel-token-1"  # read by several services, always masked
    done = subprocess.run(
        [sys.executable, "-m", f"driftline.services.{service}", "--settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert "sentinel-token-1" not in done.stdout
    rows = reference({service: SERVICES[service]}).splitlines()
    names = {row.split("`")[1] for row in rows if row.startswith("| `")}
    assert names <= set(printed)
    if "DRIFTLINE_REGISTRY_TOKEN" in printed:
        assert printed["DRIFTLINE_REGISTRY_TOKEN"] == MASK
