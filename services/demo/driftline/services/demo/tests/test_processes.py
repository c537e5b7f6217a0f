from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from driftline.services.demo.processes import ServiceSpec, Supervisor

# Writes "<name> ready" once its handler is installed, and on SIGTERM "<name> stopping",
# drains for a moment, then "<name> stopped". "ignore" leaves SIGTERM unanswered.
_SERVICE = """
import signal, sys, time
name, journal, mode = sys.argv[1:4]
def note(what):
    with open(journal, "a") as f:
        f.write(f"{name} {what}\\n")
def drain(*_):
    note("stopping")
    time.sleep(0.3)
    note("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore" else drain)
note("ready")
while True:
    time.sleep(0.05)
"""


@dataclass
class ScriptSpec(ServiceSpec):
    journal: Path = Path()
    mode: str = "drain"

    def command(self) -> list[str]:
        return [sys.executable, "-c", _SERVICE, self.name, str(self.journal), self.mode]


def _start_ready(supervisor: Supervisor, spec: ScriptSpec) -> None:
    supervisor.start(spec)
    deadline = time.monotonic() + 30
    while f"{spec.name} ready" not in _lines(spec.journal) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"{spec.name} ready" in _lines(spec.journal)


def _lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


def test_services_stop_one_at_a_time_in_reverse_start_order(tmp_path):
    journal = tmp_path / "journal"
    supervisor = Supervisor(tmp_path / "run")
    for name in ("registry", "features", "trainer"):
        _start_ready(supervisor, ScriptSpec(name, 0, journal=journal))
    supervisor.stop_all()
    stops = [line for line in _lines(journal) if not line.endswith("ready")]
    # Each drains while what started before it (what it depends on) still runs.
    assert stops == [
        "trainer stopping", "trainer stopped",
        "features stopping", "features stopped",
        "registry stopping", "registry stopped",
    ]  # fmt: skip
    assert supervisor.alive() == {}
    assert list((tmp_path / "run" / "pids").iterdir()) == []


def test_a_service_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    journal = tmp_path / "journal"
    supervisor = Supervisor(tmp_path / "run")
    _start_ready(supervisor, ScriptSpec("registry", 0, journal=journal))
    _start_ready(supervisor, ScriptSpec("stubborn", 0, journal=journal, mode="ignore"))
    procs = dict(supervisor._procs)
    supervisor.stop_all(timeout_s=0.5)
    assert procs["stubborn"].returncode == -signal.SIGKILL
    assert procs["registry"].returncode == 0  # still stopped, and cleanly, after the kill
    assert "registry stopped" in _lines(journal)
