"""Wiring and the demo's timeline: stack → services → first champion → traffic → drift →
retrain → promotion → summary and report. Ctrl-C stops everything cleanly at any point."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import structlog
from confluent_kafka import KafkaException
from redis.exceptions import RedisError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from driftline.kit.errors import DriftlineError
from driftline.kit.kafka import skip_to_end
from driftline.kit.redis_clients import delete_keys, redis_client
from driftline.kit.registry_client import RegistryClient
from driftline.kit.topics import ensure_topics
from driftline.registry.v1 import registry_pb2
from driftline.services.demo.config import Settings
from driftline.services.demo.observer import Observer, Stats
from driftline.services.demo.processes import ServiceSpec, Supervisor
from driftline.services.demo.prom import Prometheus
from driftline.services.demo.report import Summary, write_report
from driftline.services.demo.view import render

log = structlog.get_logger(__name__)


#: Start order: the registry first (the first champion is registered into it); the streaming
#: half next, warmed up with past traffic; then what watches live traffic and serves it, so
#: that drift detection compares live steady-state features with the model's reference.
REGISTRY = ServiceSpec("registry", 9103, grpc_address="127.0.0.1:15051")
STREAMING = (
    ServiceSpec("ingestion", 9101, consumes=True),
    ServiceSpec("features", 9102, consumes=True),
)
# Inference's model-event consumer has a group of its own per instance, pinned to the end.
SERVING = (
    ServiceSpec("trainer", 9106, consumes=True),
    ServiceSpec("inference", 9104, grpc_address="127.0.0.1:15052"),
)
# Started after the warm-up, at the end of its topics: it watches live traffic only.
DRIFT = ServiceSpec("drift", 9105, env={"DRIFTLINE_DRIFT_START_AT": "latest"}, consumes=True)


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
        self._use_fresh_state()
        self._producer: subprocess.Popen[bytes] | None = None
        self._observer: Observer | None = None

    def _use_fresh_state(self) -> None:
        """Give this run its own registry, offline store, trainer state and online-store keys
        (unless the caller chose them), so every run starts from a first champion and empty
        feature windows. The broker is shared: each service's consumer groups skip what earlier
        runs left in the topics when it starts (``_start``)."""
        run = time.strftime("%Y%m%dT%H%M%S")
        state = (self.settings.run_dir / "demo" / run).resolve()
        for key, sub in (
            ("DRIFTLINE_REGISTRY_DATA_DIR", "registry"),
            ("DRIFTLINE_FEATURES_OFFLINE_ROOT", "offline"),
            ("DRIFTLINE_TRAINER_OFFLINE_STORE_DIR", "offline"),
            ("DRIFTLINE_TRAINER_DATA_DIR", "trainer"),
            ("DRIFTLINE_FEATURES_DATA_DIR", "faust"),
        ):
            os.environ.setdefault(key, str(state / sub))
        # An earlier run's windows would count its events into this run's first features, and
        # its de-duplication claims would outlive it by a day: this run's keys live under a
        # prefix of its own, deleted when the demo stops (``stop``).
        self._run_keys = f"dl:demo-{run}:"
        os.environ.setdefault("DRIFTLINE_FEATURES_KEY_PREFIX", f"{self._run_keys}fs")
        os.environ.setdefault("DRIFTLINE_INGESTION_DEDUP_KEY_PREFIX", f"{self._run_keys}dedup:")

    def phase(self) -> str:
        t = self.stats.timeline
        if t.first_served_by_new_champion is not None:
            return "after_promotion"
        if t.drift_onset is not None:
            return "after_drift"
        return "before"

    def start_services(self) -> None:
        """Registry, the first champion, and the streaming half (ingestion, features)."""
        ensure_topics(self.settings.kafka)
        self._start(REGISTRY)
        self.console.print(
            "[bold]training and registering the first champion[/bold] (driftline train --initial)"
        )
        with self.supervisor.log_path("train-initial").open("ab") as out:
            subprocess.run(_driftline("train", "--initial"), check=True, stdout=out, stderr=subprocess.STDOUT)
        for spec in STREAMING:
            self._start(spec)

    def _start(self, spec: ServiceSpec) -> None:
        self.console.print(f"starting [bold]{spec.name}[/bold]")
        for group in spec.consumer_groups():
            # What an earlier run left in the topics is not this run's traffic.
            try:
                skip_to_end(self.settings.kafka, group)
            except KafkaException as err:  # a member still runs: it resumes where it was
                log.warning("consumer_group_not_skipped", group=group, error=str(err))
        self.supervisor.start(spec)
        self.supervisor.wait_ready(spec)

    def drive(self) -> None:
        """Warm the feature windows up, start the watchers and the model server, publish
        real-time traffic with drift at a known event, and watch the loop until it closes."""
        s = self.settings
        events_per_s = s.rate * (1.0 - s.duplicate_rate)
        drift_index = int((s.warmup_s + s.settle_s + s.drift_after_s) * events_per_s)
        count = int((s.warmup_s + s.max_duration_s) * s.rate)
        drift_flag = "--concept-drift-at" if s.drift == "concept" else "--covariate-drift-at"
        self._observer = Observer(
            s.kafka, s.inference_address, s.model_name, self.stats, phase=self.phase, drift_index=drift_index
        )
        self._observer.start()
        with self.supervisor.log_path("produce").open("ab") as out:
            self._producer = subprocess.Popen(
                _driftline(
                    "produce",
                    "--seed", str(s.seed),
                    "--rate", str(s.rate),
                    "--count", str(count),
                    "--warmup-s", str(s.warmup_s),
                    drift_flag, str(drift_index),
                    "--garbage-rate", str(s.garbage_rate),
                    "--duplicate-rate", str(s.duplicate_rate),
                    "--feedback",
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.console.print(f"warming the feature windows up: {s.warmup_s:.0f}s of traffic as fast as it goes")
        for spec in SERVING:
            self._start(spec)
        self._wait_for_warm_features()
        self._start(DRIFT)
        self._observer.scoring.set()
        settled = time.time() - self.started
        if self.stats.timeline.drift_onset is not None:
            log.warning("drift_before_scoring", hint="raise DRIFTLINE_DEMO_SETTLE_S", settled_s=settled)
        self.console.print("[bold]live traffic[/bold]: scoring every feature update")
        deadline = time.time() + s.max_duration_s
        with Live(console=self.console, refresh_per_second=2, transient=not s.live) as live:
            while time.time() < deadline:
                if self._recovered():
                    break
                if self._producer.poll() is not None:
                    break
                dead = [name for name, up in self.supervisor.alive().items() if not up]
                if dead:
                    raise RuntimeError(f"services exited: {', '.join(dead)} (logs in {s.run_dir}/logs)")
                if s.live:
                    live.update(render(self.stats, self.prom, self.phase(), self.started, "report follows"))
                time.sleep(1.0)

    def _recovered(self) -> bool:
        s = self.settings
        return self.stats.recovered(
            labels=s.after_promotion_labels, recall=s.recovered_recall, precision=s.recovered_precision
        )

    def _wait_for_warm_features(self) -> None:
        assert self._observer is not None
        assert self._producer is not None
        deadline = time.time() + self.settings.warmup_timeout_s
        while time.time() < deadline:
            lag = self._observer.feature_lag_s
            if lag is not None and lag < 3.0:
                return
            if self._producer.poll() is not None:
                raise RuntimeError(f"the producer exited with {self._producer.returncode} during warm-up")
            time.sleep(0.5)
        lag = self._observer.feature_lag_s
        raise TimeoutError(f"features still {lag}s behind after {self.settings.warmup_timeout_s:.0f}s")

    def summary(self) -> Summary:
        t = self.stats.timeline
        before = self.stats.phase_scores("before")
        after = self.stats.phase_scores("after_drift")
        promoted = self.stats.phase_scores("after_promotion")
        final_version = self.stats.final_champion()
        final = self.stats.version_scores(final_version, last=self.settings.after_promotion_labels)
        # The retrain that made the new champion, as its run record timed it (the trainer's mean
        # over every run would count refused and deferred ones too).
        run = None
        if t.new_champion_version:
            try:
                run = self.champion_run(t.new_champion_version)[1]
            except DriftlineError as err:  # the summary still reports the rest
                log.warning("champion_run_unavailable", version=t.new_champion_version, error=str(err))
        retrain = run.duration_seconds if run is not None else None
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
                champions_after_drift=list(t.promoted_after_onset),
                onset_to_final_champion_serving_s=_delta(t.drift_onset, t.first_served.get(final_version)),
                final_champion_labelled=final.labelled,
                final_champion_accuracy=final.accuracy,
                final_champion_recall=final.recall,
                final_champion_precision=final.precision,
                predictions=self.stats.predictions,
                prediction_errors=self.stats.prediction_errors,
                false_alarms_before_drift=self.stats.false_alarms,
                promotions_before_drift=self.stats.early_promotions,
                champion_before=versions[0] if versions else 0,
                champion_after=self.stats.champion_version,
            )

    def champion_run(self, version: int) -> tuple[registry_pb2.ModelVersion, registry_pb2.Run | None]:
        """A version of the model as the registry describes it, and the training run its lineage
        names (None for a version registered without one, the first champion say)."""

        async def read() -> tuple[registry_pb2.ModelVersion, registry_pb2.Run | None]:
            async with RegistryClient(REGISTRY.grpc_address, timeout_s=10.0) as registry:
                found = await registry.get_version(self.settings.model_name, version=version)
                run_id = found.lineage.run_id
                return found, (await registry.get_run(run_id) if run_id else None)

        return asyncio.run(read())

    def report(self, out_dir: Path, summary: Summary) -> Path:
        """Write the HTML report with PNG plots drawn from Prometheus over the demo's run."""
        return write_report(out_dir, self.prom, self.started, time.time(), summary)

    def stop(self) -> None:
        if self._producer is not None and self._producer.poll() is None:
            self._producer.terminate()
            try:
                self._producer.wait(30)
            except subprocess.TimeoutExpired:  # the services must be stopped all the same
                self._producer.kill()
                self._producer.wait()
        if self._observer is not None:
            self._observer.stop()
        self.supervisor.stop_all()
        self._delete_run_keys()

    def _delete_run_keys(self) -> None:
        """Delete the Redis keys this run wrote under its own prefix (online features and
        de-duplication claims): repeated runs must not fill Redis up to its memory limit."""
        client = redis_client(self.settings.redis)
        try:
            deleted = delete_keys(client, self._run_keys)
            log.info("demo_keys_deleted", prefix=self._run_keys, keys=deleted)
        except RedisError as err:
            log.warning("demo_keys_not_deleted", prefix=self._run_keys, error=str(err))
        finally:
            client.close()


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
    """Run the demo; whatever happens (Ctrl-C, SIGTERM, a failure), stop what it started."""
    console = Console()
    demo = Demo(settings, console)
    signal.signal(signal.SIGTERM, _interrupt)
    summary: Summary | None = None
    try:
        demo.start_services()
        demo.drive()
        summary = demo.summary()
    except KeyboardInterrupt:
        log.warning("demo_interrupted")
    finally:
        with _signals_held(console):
            demo.stop()
    if summary is None:
        console.print("[yellow]interrupted: every service the demo started is stopped[/yellow]")
        return 130
    report = demo.report(settings.out_dir, summary)
    print_summary(console, summary, report)
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_held(console: Console) -> Iterator[None]:
    """Ctrl-C and SIGTERM are acknowledged but do not interrupt the block: a second Ctrl-C (or a
    ``timeout`` that signals the whole process group) used to cut the stop short and leave the
    services running. The stop is bounded anyway: SIGKILL follows SIGTERM after 20 s."""

    def hold(_signum: int, _frame: object) -> None:
        console.print("[yellow]stopping the services the demo started; this takes a few seconds[/yellow]")

    signals = (signal.SIGINT, signal.SIGTERM)
    # Blocked while the handlers are swapped: one arriving in between waits, then meets `hold`.
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        previous = {sig: signal.signal(sig, hold) for sig in signals}
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
