"""Start, watch and stop the Driftline services as tracked local processes."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import requests
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = structlog.get_logger(__name__)


class ConsumerSettings(Protocol):
    """A service's settings that name the consumer groups it commits offsets under."""

    def consumer_groups(self) -> list[str]: ...


@dataclass
class ServiceSpec:
    """How to start one service and how to tell that it is ready."""

    name: str
    metrics_port: int
    grpc_address: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: Whether it commits Kafka consumer offsets (its settings then name the groups).
    consumes: bool = False

    def command(self) -> list[str]:
        return [sys.executable, "-m", f"driftline.services.{self.name}"]

    def consumer_groups(self) -> list[str]:
        """Its consumer groups, as its settings (``driftline.services.<name>.config.Settings``, the
        skeleton every service shares) name them now: the environment may change them."""
        if not self.consumes:
            return []
        settings: ConsumerSettings = importlib.import_module(
            f"driftline.services.{self.name}.config"
        ).Settings()
        return settings.consumer_groups()


class Supervisor:
    """Runs services as child processes with a PID file and a log file each under run_dir."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "pids").mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self._run_dir / "logs" / f"{name}.log"

    def start(self, spec: ServiceSpec) -> None:
        if spec.name in self._procs and self._procs[spec.name].poll() is None:
            return
        handle = self.log_path(spec.name).open("ab")
        proc = subprocess.Popen(
            spec.command(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **spec.env},
            start_new_session=True,
        )
        handle.close()
        self._procs[spec.name] = proc
        (self._run_dir / "pids" / f"{spec.name}.pid").write_text(str(proc.pid))
        log.info("service_started", service=spec.name, pid=proc.pid)

    def wait_ready(self, spec: ServiceSpec, timeout_s: float = 120.0) -> None:
        """Block until the service's health says SERVING (gRPC) or its /metrics answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self._procs[spec.name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{spec.name} exited with {proc.returncode}; see {self.log_path(spec.name)}"
                )
            if _ready(spec):
                log.info("service_ready", service=spec.name)
                return
            time.sleep(0.5)
        raise TimeoutError(f"{spec.name} not ready after {timeout_s:.0f}s; see {self.log_path(spec.name)}")

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self._procs.items()}

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """Stop the services in the reverse of their start order, one at a time: each drains
        (a trainer finishes its retrain and registers it) while what it depends on still runs.
        SIGTERM, then SIGKILL after ``timeout_s``."""
        for name, proc in reversed(list(self._procs.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("service_killed", service=name, after_s=timeout_s)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            (self._run_dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
            log.info("service_stopped", service=name, returncode=proc.returncode)
        self._procs.clear()


def _ready(spec: ServiceSpec) -> bool:
    if spec.grpc_address:
        return grpc_serving(spec.grpc_address)
    try:
        return requests.get(f"http://127.0.0.1:{spec.metrics_port}/metrics", timeout=1.0).status_code == 200
    except requests.RequestException:
        return False


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
