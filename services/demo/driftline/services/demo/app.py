"""Wiring and the demo's timeline: stack → services → first champion → traffic → drift →
retrain → promotion → summary and report. Ctrl-C stops everything cleanly at any point."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table

from driftline.kit.topics import ensure_topics
from driftline.services.demo.config import Settings
from driftline.services.demo.observer import Observer, Stats
from driftline.services.demo.processes import ServiceSpec, Supervisor
from driftline.services.demo.prom import Prometheus
from driftline.services.demo.report import Summary, write_report
from driftline.services.demo.view import render

log = structlog.get_logger(__name__)

#: Start order: the registry first (the trainer registers the first champion into it), the
#: inference service last (it serves only once a champion exists).
SERVICES = (
    ServiceSpec("registry", 9103, grpc_address="127.0.0.1:50051"),
    ServiceSpec("ingestion", 9101),
    ServiceSpec("features", 9102),
    ServiceSpec("drift", 9105),
    ServiceSpec("trainer", 9106),
    ServiceSpec("inference", 9104, grpc_address="127.0.0.1:50052"),
)


def _driftline(*args: str) -> list[str]:
    return [sys.executable, "-m", "driftline.services.cli", "--log-format", "json", *args]


class Demo:
    """One run of the loop. ``run()`` returns the summary; ``stop()`` ends it early."""

    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.supervisor = Supervisor(settings.run_dir)
        self.prom = Prometheus(settings.prometheus_url)
        self.stats = Stats()
        self.started = time.time()
        self._producer: subprocess.Popen[bytes] | None = None
        self._observer: Observer | None = None

    def phase(self) -> str:
        t = self.stats.timeline
        if t.first_served_by_new_champion is not None:
            return "after_promotion"
        if t.drift_onset is not None:
            return "after_drift"
        return "before"

    def start_services(self) -> None:
        ensure_topics(self.settings.kafka.bootstrap_servers)
        registry, *rest = SERVICES
        self._start(registry)
        self.console.print(
            "[bold]training and registering the first champion[/bold] (driftline train --initial)"
        )
        subprocess.run(
            _driftline("train", "--initial"),
            check=True,
            stdout=self.supervisor.log_path("train-initial").open("ab"),
            stderr=subprocess.STDOUT,
        )
        for spec in rest:
            self._start(spec)

    def _start(self, spec: ServiceSpec) -> None:
        self.console.print(f"starting [bold]{spec.name}[/bold]")
        self.supervisor.start(spec)
        self.supervisor.wait_ready(spec)

    def drive(self) -> None:
        """Publish traffic with drift at a known time and watch the loop until it closes."""
        s = self.settings
        self._observer = Observer(s.kafka, s.inference_address, s.model_name, self.stats, phase=self.phase)
        self._observer.start()
        drift_index = int(s.drift_after_s * s.rate)
        count = int(s.max_duration_s * s.rate)
        drift_flag = "--concept-drift-at" if s.drift == "concept" else "--covariate-drift-at"
        self._producer = subprocess.Popen(
            _driftline(
                "produce",
                "--seed",
                str(s.seed),
                "--rate",
                str(s.rate),
                "--count",
                str(count),
                drift_flag,
                str(drift_index),
                "--garbage-rate",
                str(s.garbage_rate),
                "--duplicate-rate",
                str(s.duplicate_rate),
                "--feedback",
            ),
            stdout=self.supervisor.log_path("produce").open("ab"),
            stderr=subprocess.STDOUT,
        )
        traffic_started = time.time()
        deadline = self.started + s.max_duration_s
        with Live(console=self.console, refresh_per_second=2, transient=not s.live) as live:
            while time.time() < deadline:
                t = self.stats.timeline
                if t.drift_onset is None and time.time() >= traffic_started + s.drift_after_s:
                    with self.stats.lock:
                        t.drift_onset = time.time()
                if self.stats.phase_scores("after_promotion").labelled >= s.after_promotion_labels:
                    break
                if self._producer.poll() is not None:
                    break
                dead = [name for name, up in self.supervisor.alive().items() if not up]
                if dead:
                    raise RuntimeError(f"services exited: {', '.join(dead)} (logs in {s.run_dir}/logs)")
                if s.live:
                    live.update(render(self.stats, self.prom, self.phase(), self.started, "report follows"))
                time.sleep(1.0)

    def summary(self) -> Summary:
        t = self.stats.timeline
        before = self.stats.phase_scores("before")
        after = self.stats.phase_scores("after_drift")
        promoted = self.stats.phase_scores("after_promotion")
        retrain = self.prom.scalar(
            "max(driftline_trainer_retrain_seconds_sum / driftline_trainer_retrain_seconds_count)"
        )
        with self.stats.lock:
            versions = sorted(self.stats.served_versions)
            return Summary(
                detection_delay_s=_delta(t.drift_onset, t.first_drift_report),
                retrain_s=retrain,
                onset_to_new_champion_serving_s=_delta(t.drift_onset, t.first_served_by_new_champion),
                accuracy_before=before.accuracy,
                accuracy_after_drift=after.accuracy,
                accuracy_after_promotion=promoted.accuracy,
                recall_before=before.recall,
                recall_after_drift=after.recall,
                recall_after_promotion=promoted.recall,
                predictions=self.stats.predictions,
                prediction_errors=self.stats.prediction_errors,
                champion_before=versions[0] if versions else 0,
                champion_after=self.stats.champion_version,
            )

    def report(self, out_dir: Path, summary: Summary) -> Path:
        """Write the HTML report with PNG plots drawn from Prometheus over the demo's run."""
        return write_report(out_dir, self.prom, self.started, time.time(), summary)

    def stop(self) -> None:
        if self._producer is not None and self._producer.poll() is None:
            self._producer.terminate()
            self._producer.wait(30)
        if self._observer is not None:
            self._observer.stop()
        self.supervisor.stop_all()


def _delta(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def print_summary(console: Console, summary: Summary, report: Path) -> None:
    table = Table(title="Driftline demo summary", show_header=False)
    for key, value in summary.__dict__.items():
        text = "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
        table.add_row(key.replace("_", " "), text)
    console.print(table)
    console.print(f"report: [bold]{report}[/bold]")


def serve(settings: Settings) -> int:
    console = Console()
    demo = Demo(settings, console)
    try:
        demo.start_services()
        demo.drive()
        summary = demo.summary()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything[/yellow]")
        demo.stop()
        return 130
    except Exception:
        demo.stop()
        raise
    demo.stop()
    report = demo.report(settings.out_dir, summary)
    print_summary(console, summary, report)
    return 0
