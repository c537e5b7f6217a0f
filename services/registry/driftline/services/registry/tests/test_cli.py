"""``driftline models`` and ``driftline runs`` against a registry running in a background thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from driftline.kit.registry_client import RegistryClient
from driftline.kit.settings import MetricsSettings
from driftline.registry.v1 import registry_pb2 as pb
from driftline.services.registry import testing
from driftline.services.registry.app import RegistryApp
from driftline.services.registry.cli import models, runs
from driftline.services.registry.config import Settings

TOKEN = "cli-token"


class _Publisher:
    def send(self, topic, value, key=None, headers=None):
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(None)
        return future


@pytest.fixture
def address(tmp_path):
    """A registry served from its own event loop in a thread, as a separate process would."""
    loop = asyncio.new_event_loop()
    settings = Settings(
        port=0,
        data_dir=tmp_path,
        token=SecretStr(TOKEN),
        lock_breakers=["default"],
        metrics=MetricsSettings(enabled=False),
        drain_s=1.0,
    )
    app = RegistryApp(settings, publisher=_Publisher())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(app.start(), loop).result(30)
    yield f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(app.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def cli(address, monkeypatch):
    monkeypatch.setenv("DRIFTLINE_REGISTRY_ADDRESS", address)
    monkeypatch.setenv("DRIFTLINE_REGISTRY_TOKEN", TOKEN)
    runner = CliRunner()

    def invoke(group, *args: str):
        return runner.invoke(group, list(args), catch_exceptions=False)

    return invoke


def test_register_list_show_alias_audit_verify(cli, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(testing.tiny_model())
    result = cli(
        models,
        "register",
        "fraud",
        str(model),
        "--features",
        ",".join(testing.FEATURES),
        "--metric",
        "auc=0.9",
        "--tag",
        "team=risk",
        "--reason",
        "initial model",
    )
    assert result.exit_code == 0, result.output
    assert "registered fraud v1 sha256:" in result.output
    assert cli(models, "register", "fraud", str(model)).exit_code == 0

    listed = cli(models, "list")
    assert listed.exit_code == 0
    assert "fraud" in listed.output
    assert "auc=0.9" in listed.output

    moved = cli(models, "alias", "set", "fraud", "champion", "1", "--reason", "go live")
    assert moved.exit_code == 0, moved.output
    assert "v- -> v1" in moved.output
    assert "v1 -> v2" in cli(models, "alias", "set", "fraud", "champion", "2").output

    stale = cli(models, "alias", "set", "fraud", "champion", "1", "--expected", "1")
    assert stale.exit_code == 1
    assert "ABORTED" in stale.output

    shown = cli(models, "show", "fraud", "--alias", "champion")
    assert shown.exit_code == 0
    assert "fraud v2" in shown.output
    assert "champion" in shown.output

    now = datetime.now(UTC).isoformat()
    assert "v2" in cli(models, "alias", "at", "fraud", "champion", now).output

    audit = cli(models, "audit", "fraud")
    assert audit.exit_code == 0
    assert "alias_set" in audit.output
    assert "go live" in audit.output
    verified = cli(models, "verify")
    assert verified.exit_code == 0
    assert "intact: 4 records" in verified.output


def test_lock_and_a_forced_unlock_on_the_record(cli, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(testing.tiny_model())
    assert cli(models, "register", "fraud", str(model)).exit_code == 0
    assert "fraud locked by freeze" in cli(models, "lock", "fraud", "freeze").output

    unexplained = cli(models, "unlock", "fraud", "freeze", "--force")
    assert unexplained.exit_code == 1
    assert "INVALID_ARGUMENT" in unexplained.output
    forced = cli(models, "unlock", "fraud", "freeze", "--force", "--reason", "holder left")
    assert forced.exit_code == 0, forced.output
    assert "fraud unlocked" in forced.output

    audit = cli(models, "audit", "fraud").output
    assert "forced=True" in audit
    assert "holder left" in audit


def _aliases_by_version(cli) -> dict[str, str]:
    """``models list fraud``'s aliases column ("archived" for an archived version) by version."""
    lines = cli(models, "list", "fraud").output.splitlines()
    return {cells[2].strip(): cells[3].strip() for line in lines if len(cells := line.split("│")) == 11}


def test_archive_retires_a_version_no_alias_points_at(cli, tmp_path):
    for number, bias in ((1, 0.1), (2, 0.2)):
        model = tmp_path / f"model{number}.onnx"
        model.write_bytes(testing.tiny_model(bias=bias))
        assert cli(models, "register", "fraud", str(model)).exit_code == 0
    assert cli(models, "alias", "set", "fraud", "champion", "2").exit_code == 0

    refused = cli(models, "archive", "fraud", "2")
    assert refused.exit_code == 1
    assert "FAILED_PRECONDITION" in refused.output
    archived = cli(models, "archive", "fraud", "1", "--reason", "superseded")
    assert archived.exit_code == 0, archived.output
    assert "archived fraud v1 at 20" in archived.output

    rows = _aliases_by_version(cli)
    assert rows["1"] == "archived"
    assert rows["2"] == "champion"
    shown = {
        cells[1].strip(): cells[2].strip()
        for line in cli(models, "show", "fraud", "-v", "1").output.splitlines()
        if len(cells := line.split("│")) == 4
    }
    assert shown["archived"].startswith("20")
    assert shown["reference"] == "none"
    assert "superseded" in cli(models, "audit", "fraud").output


def test_prune_archives_the_oldest_versions_no_alias_points_at(cli, tmp_path):
    for number in range(1, 7):
        model = tmp_path / f"model{number}.onnx"
        model.write_bytes(testing.tiny_model(bias=number / 10))
        assert cli(models, "register", "fraud", str(model)).exit_code == 0
    assert cli(models, "alias", "set", "fraud", "champion", "2").exit_code == 0
    assert cli(models, "archive", "fraud", "3").exit_code == 0

    planned = cli(models, "prune", "fraud", "--keep", "2", "--dry-run")
    assert "would archive fraud v1, v4\n" in planned.output
    assert _aliases_by_version(cli) == {"1": "", "2": "champion", "3": "archived", "4": "", "5": "", "6": ""}
    pruned = cli(models, "prune", "fraud", "--keep", "2")
    assert pruned.exit_code == 0, pruned.output
    assert "archived fraud v1, v4\n" in pruned.output
    assert _aliases_by_version(cli) == {
        "1": "archived",
        "2": "champion",
        "3": "archived",
        "4": "archived",
        "5": "",
        "6": "",
    }
    assert "archived fraud nothing\n" in cli(models, "prune", "fraud", "--keep", "2").output


def test_register_refuses_a_pickle_with_its_status(cli, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(testing.pickle_bytes())
    result = cli(models, "register", "fraud", str(bad))
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output
    assert "pickle" in result.output


def test_writes_without_a_token_fail(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("DRIFTLINE_REGISTRY_TOKEN")
    model = tmp_path / "model.onnx"
    model.write_bytes(testing.tiny_model())
    result = cli(models, "register", "fraud", str(model))
    assert result.exit_code == 1
    assert "UNAUTHENTICATED" in result.output


def test_runs_list_and_compare(cli, address):
    async def record() -> None:
        async with RegistryClient(address, TOKEN) as client:
            await client.record_run(
                pb.Run(run_id="run-a", model_name="fraud", metrics={"auc": 0.91}, params={"depth": "4"})
            )
            await client.record_run(
                pb.Run(
                    run_id="run-b",
                    model_name="fraud",
                    metrics={"auc": 0.93},
                    params={"depth": "6"},
                    outcome=pb.RUN_OUTCOME_PROMOTED,
                )
            )

    asyncio.run(record())
    listed = cli(runs, "list", "--model", "fraud")
    assert listed.exit_code == 0
    assert "run-a" in listed.output
    assert "promoted" in listed.output
    compared = cli(runs, "compare", "run-a", "run-b")
    assert compared.exit_code == 0, compared.output
    assert "metric auc" in compared.output
    assert "0.9100" in compared.output
    assert "0.9300" in compared.output
    assert "param depth" in compared.output
    missing = cli(runs, "compare", "run-a", "run-zzz")
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.output
