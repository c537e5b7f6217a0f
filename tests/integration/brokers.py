"""The local stack's own script, ``deploy/local/stack.sh``, as the tests run it; and private
Kafka brokers for the tests that cannot use the shared one: started with that script, on free
ports and in their own run directory, and stopped and deleted after."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import SecretStr

from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def private_broker(folder: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A single-node KRaft broker formatted for its user alone; yields its plaintext
    ``host:port``. ``env`` adds stack variables (KAFKA_SSL_PORT, KAFKA_TLS_CERT_FILE, ...)."""
    port, controller = free_port(), free_port()
    replaced = {"KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller)}
    env_file = folder / "env"
    lines = (ROOT / ".env").read_text().splitlines()
    env_file.write_text("".join(f"{_replace(line, replaced)}\n" for line in lines))
    overrides = {
        "DRIFTLINE_ENV_FILE": str(env_file),
        "DRIFTLINE_RUN_DIR": str(folder / "run"),
        "DRIFTLINE_CACHE_DIR": os.environ.get("DRIFTLINE_CACHE_DIR", str(ROOT / ".cache")),
        "KAFKA_HEAP_OPTS": "-Xms128m -Xmx256m",
        # The tests' environment holds the shared stack's ports, which win over the file's.
        **replaced,
        **(env or {}),
    }
    try:  # `down` also when `up` times out: the broker runs detached from it
        started = run_stack("up", "kafka", env=overrides, timeout_s=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        run_stack("down", "kafka", env=overrides, timeout_s=120)


def run_stack(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """``stack.sh`` with ``args`` (``"down", "kafka"``, ``"restart-kafka"``, ...), finished, its
    output captured. ``env`` replaces the environment's values it names (a private stack: its
    own env file, run directory and ports)."""
    return subprocess.run(
        ["bash", str(ROOT / "deploy/local/stack.sh"), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _replace(line: str, values: dict[str, str]) -> str:
    name = line.split("=", 1)[0]
    return f"{name}={values[name]}" if name in values else line


def kafka_environment(settings: KafkaSettings) -> dict[str, str]:
    """``settings`` as the ``DRIFTLINE_KAFKA_*`` variables a service process reads them from."""
    values = {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in settings.dict().items()
        if value is not None
    }
    return {f"DRIFTLINE_KAFKA_{name.upper()}": str(value) for name, value in values.items()}
