"""The services' shared command line: ``--help``, ``--settings``, and invalid settings."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest
from pydantic import BaseSettings, Field, SecretStr, root_validator

from driftline.kit import entrypoint
from driftline.kit.settings import LogSettings
from driftline.kit.settings_reference import MASK, problems, reference, settings_of


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Broker(BaseSettings):
    """A nested class with its own prefix, shared by two services."""

    url: str = Field("kafka://user:hunter2@127.0.0.1:9092", description="Broker URL.")
    batch: int = Field(10, ge=1, description="Batch | size.")

    class Config:
        env_prefix = "T_BROKER_"


class Alpha(BaseSettings):
    port: int = Field(1234, description="Port.")
    token: SecretStr | None = Field(None, description="Write token.")
    tokens: dict[str, SecretStr] = Field(default_factory=dict, description="Named tokens.")
    api_key: str = Field("plain-but-secret", description="Looks plain, grants access.")
    key_prefix: str = Field("dl:", description="Not a secret.")
    colour: Colour = Field(Colour.RED, description="A choice.")
    sizes: list[int] = Field(default_factory=lambda: [1, 64], description="A list.")
    where: Path = Field(Path("out"), description="A path.")
    shadow: bool = Field(False, description="A flag.")
    limit: int | None = Field(None, description="Unset by default.")
    address: str = Field("127.0.0.1:1", env=["T_ALPHA_ADDRESS", "T_SHARED_ADDRESS"], description="Two names.")
    broker: Broker = Field(default_factory=Broker)
    log: LogSettings = Field(default_factory=LogSettings)

    @root_validator(skip_on_failure=True)
    def _flag_needs_port(cls, values: dict) -> dict:  # noqa: N805
        if values["shadow"] and values["port"] == 0:
            raise ValueError("shadow needs a port")
        return values

    class Config:
        env_prefix = "T_ALPHA_"


class Beta(BaseSettings):
    name: str = Field("beta", description="Own setting.")
    broker: Broker = Field(default_factory=Broker)

    class Config:
        env_prefix = "T_BETA_"


def test_every_variable_is_listed_with_its_names_type_and_default():
    by_env = {s.env[0]: s for s in settings_of(Alpha)}
    assert by_env["T_ALPHA_PORT"].default == "1234"
    assert by_env["T_ALPHA_COLOUR"].type == "red | blue"
    assert by_env["T_ALPHA_SIZES"].default == "[1,64]"
    assert by_env["T_ALPHA_SHADOW"].default == "false"
    assert by_env["T_ALPHA_LIMIT"].default is None
    assert by_env["T_ALPHA_ADDRESS"].env == ("T_ALPHA_ADDRESS", "T_SHARED_ADDRESS")
    assert by_env["T_BROKER_BATCH"].type == "int"  # not ConstrainedIntValue
    assert by_env["T_BROKER_BATCH"].path == ("broker", "batch")
    assert by_env["DRIFTLINE_LOG_LEVEL"].default == "INFO"
    secrets = {s.env[0] for s in settings_of(Alpha) if s.secret}
    assert secrets == {"T_ALPHA_TOKEN", "T_ALPHA_TOKENS", "T_ALPHA_API_KEY"}


def test_settings_prints_the_environment_s_values_with_secrets_masked(monkeypatch, capsys):
    monkeypatch.setenv("T_ALPHA_PORT", "99")
    monkeypatch.setenv("T_ALPHA_TOKEN", "tok-1")
    monkeypatch.setenv("T_ALPHA_TOKENS", '{"ops": "tok-2"}')
    monkeypatch.setenv("T_SHARED_ADDRESS", "10.0.0.1:5")
    ran = []
    entrypoint.main("alpha", Alpha, ran.append, argv=["--settings"])
    out = capsys.readouterr().out
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert ran == []  # --settings never runs the service
    assert lines["T_ALPHA_PORT"] == "99"
    assert lines["T_ALPHA_TOKEN"] == MASK
    assert lines["T_ALPHA_TOKENS"] == f'{{"ops":"{MASK}"}}'
    assert lines["T_ALPHA_API_KEY"] == MASK
    assert lines["T_ALPHA_KEY_PREFIX"] == "dl:"
    assert lines["T_ALPHA_ADDRESS"] == "10.0.0.1:5"
    assert lines["T_BROKER_URL"] == f"kafka://user:{MASK}@127.0.0.1:9092"
    assert lines["T_ALPHA_LIMIT"] == ""
    assert "tok-1" not in out
    assert "tok-2" not in out
    assert "hunter2" not in out


def test_help_lists_the_variables_and_runs_nothing(capsys):
    ran = []
    with pytest.raises(SystemExit) as stop:
        entrypoint.main("alpha", Alpha, ran.append, argv=["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert ran == []
    assert "T_ALPHA_PORT  int [default: 1234]" in out
    assert "T_ALPHA_ADDRESS (or T_SHARED_ADDRESS)" in out
    assert "T_ALPHA_LIMIT  Optional[int] [default: unset]" in out
    assert "T_BROKER_BATCH" in out


def test_an_unknown_argument_is_a_usage_error(capsys):
    ran = []
    with pytest.raises(SystemExit) as stop:
        entrypoint.main("alpha", Alpha, ran.append, argv=["--port", "1"])
    assert stop.value.code == entrypoint.USAGE_ERROR
    assert ran == []
    assert "unrecognized arguments: --port 1" in capsys.readouterr().err


def test_invalid_settings_name_every_variable_at_fault_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("T_ALPHA_PORT", "eighty")
    monkeypatch.setenv("T_ALPHA_COLOUR", "green")
    monkeypatch.setenv("T_ALPHA_SIZES", '[1, "x"]')
    monkeypatch.setenv("T_BROKER_BATCH", "0")
    ran = []
    with pytest.raises(SystemExit) as stop:
        entrypoint.main("alpha", Alpha, ran.append, argv=[])
    err = capsys.readouterr().err
    assert stop.value.code == entrypoint.USAGE_ERROR
    assert ran == []
    assert "Traceback" not in err
    assert err.splitlines()[0] == "alpha: invalid settings"
    # The nested class's fault is reported first; the top class's once the nested ones build.
    assert "T_BROKER_BATCH: ensure this value is greater than or equal to 1" in err
    monkeypatch.delenv("T_BROKER_BATCH")
    assert problems(Alpha) == [
        "T_ALPHA_PORT: value is not a valid integer",
        "T_ALPHA_COLOUR: value is not a valid enumeration member; permitted: 'red', 'blue'",
        "T_ALPHA_SIZES[1]: value is not a valid integer",
    ]


def test_unparsable_json_and_class_wide_rules_are_explained(monkeypatch):
    monkeypatch.setenv("T_ALPHA_SIZES", "[1,")
    assert problems(Alpha) == ["T_ALPHA_SIZES: not valid JSON (Expecting value: line 1 column 4 (char 3))"]
    monkeypatch.delenv("T_ALPHA_SIZES")
    monkeypatch.setenv("T_ALPHA_SHADOW", "true")
    monkeypatch.setenv("T_ALPHA_PORT", "0")
    assert problems(Alpha) == ["shadow needs a port"]
    monkeypatch.setenv("T_ALPHA_PORT", "1")
    assert problems(Alpha) == []


def test_the_service_runs_with_its_settings_and_exits_with_its_status(monkeypatch):
    monkeypatch.setenv("T_ALPHA_PORT", "4321")
    seen = []

    def run(settings: Alpha) -> int:
        seen.append(settings.port)
        return 3

    with pytest.raises(SystemExit) as stop:
        entrypoint.main("alpha", Alpha, run, argv=[])
    assert (stop.value.code, seen) == (3, [4321])


def test_the_reference_lists_shared_classes_once():
    doc = reference({"alpha": Alpha, "beta": Beta})
    assert doc.count("`T_BROKER_URL`") == 1
    assert "## Broker (`T_BROKER_*`)\n\nRead by alpha, beta." in doc
    assert "Also reads: [Broker (`T_BROKER_*`)](#broker-t_broker_)." in doc
    # Used by one service only: listed in its own table.
    assert "| `DRIFTLINE_LOG_LEVEL` | str | `INFO` |" in doc.split("## beta")[0]
    assert "| `T_ALPHA_ADDRESS` or `T_SHARED_ADDRESS` | str | `127.0.0.1:1` | Two names. |" in doc
    assert "| `T_ALPHA_LIMIT` | Optional[int] | *unset* |" in doc
    assert "Batch \\| size." in doc  # a pipe would split the table's cell
    assert "hunter2" in doc  # defaults are documented as they are; only --settings masks
