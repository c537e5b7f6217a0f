"""Closing the loop, measured: detection delay, false alarms, retrain time, time from drift
onset to the new champion serving, and accuracy before and after.

Three parts, each a comparison run in this process:

1. Online detectors on the simulator's covariate drift, with alibi-detect's own protocol (ERT 50,
   test window 10, delay counted from a full window of pre-change data), printed next to the
   figures alibi-detect publishes for its online detectors (MMD 6.0 and LSDD 4.3 events under
   drift at ERT 50, window 10: `doc/source/examples/cd_online_wine.ipynb`; the CVM and FET pages
   publish none). Same protocol, different data: a lead, not a like-for-like race.
2. The drift service's monitor with its default settings on a long stationary stream: every
   DRIFT report is a false alarm; the rate is given per hour at the demo's event rate.
3. The whole loop on the local stack (`make up` first), through the demo's orchestration:
   detection delay (seconds, and events at the stream's rate), retrain time, onset to the new
   champion serving, and accuracy and fraud recall before drift, after it, and after promotion.

    .venv/bin/python bench/loop.py [--runs 100] [--stationary 30000] [--no-stack]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from driftline.kit.logging import configure_logging
from driftline.kit.settings import LogSettings
from driftline.services.drift.config import Settings as DriftSettings
from driftline.services.drift.evaluation import measure_detection_delay, measure_monitor_delay
from driftline.services.drift.simulated import FEATURES, ToyModel, simulate
from driftline.simulator import SimulatorConfig

console = Console()
NUMERIC = [0, 1, 2]  # amount, amount_ratio, seconds_since_last (txn_count_10s has too few values)
BINARY = [4, 5, 6]  # is_foreign, risky_category, online
PUBLISHED = {"mmd-online (alibi-detect)": 6.0, "lsdd-online (alibi-detect)": 4.3}


def detectors(runs: int) -> None:
    before = simulate(SimulatorConfig(seed=1), 25_000)
    after = simulate(SimulatorConfig(seed=2, covariate_drift_at=0), 25_000)
    table = Table(
        "detector",
        "ERT",
        "window",
        "mean delay (events)",
        "median",
        "p90",
        "missed",
        title="1. online detectors, covariate drift",
    )
    for name, cols in (("cvm-online", NUMERIC), ("fet-online", BINARY)):
        started = time.perf_counter()
        stats = measure_detection_delay(
            before.features[:, cols],
            after.features[:, cols],
            detector=name,
            ert=50,
            window_sizes=(10,),
            runs=runs,
            before=before.features[:, cols],
        )
        table.add_row(
            name,
            "50",
            "10",
            f"{stats.mean:.1f}",
            f"{stats.median:.0f}",
            f"{stats.p90:.0f}",
            f"{stats.missed}/{stats.runs}",
        )
        console.log(f"{name}: {runs} runs in {time.perf_counter() - started:.1f}s")
    for name, delay in PUBLISHED.items():
        table.add_row(name, "50", "10", f"{delay:.1f}", "", "", "published")
    console.print(table)


def stationary(events: int, rate: float) -> None:
    history = simulate(SimulatorConfig(seed=3), 20_000)
    model = ToyModel(history.features, history.labels)
    stream = simulate(SimulatorConfig(seed=4), events)
    started = time.perf_counter()
    run = measure_monitor_delay(
        history.features,
        FEATURES,
        stream.features,
        change_point=len(stream.features),
        config=DriftSettings().monitor_config(),
        reference_scores=model.score(history.features),
        stream_scores=model.score(stream.features),
    )
    hours = len(stream.features) / rate / 3600
    table = Table(
        "detector",
        "DRIFT reports",
        f"per hour at {rate:.0f} events/s",
        title=f"2. false alarms, {len(stream.features)} stationary events",
    )
    for d in run.delays:
        table.add_row(f"{d.stream}/{d.detector}", str(d.false_alarms), f"{d.false_alarms / hours:.1f}")
    table.add_row("all detectors", str(run.false_alarms), f"{run.false_alarms / hours:.1f}")
    console.print(table)
    console.log(f"stationary monitor run: {time.perf_counter() - started:.1f}s")


def whole_loop(rate: float) -> None:
    from driftline.services.demo.app import Demo
    from driftline.services.demo.config import Settings

    out = Path(".run/bench-loop")
    settings = Settings(
        rate=rate, live=False, run_dir=out / "run", out_dir=out / "report", max_duration_s=300
    )
    demo = Demo(settings, Console(file=io.StringIO()))
    try:
        demo.start_services()
        demo.drive()
        summary = demo.summary()
    finally:
        demo.stop()
    table = Table("measure", "value", title="3. the whole loop on the local stack (concept drift)")
    delay = summary.detection_delay_s
    table.add_row("detection delay", "—" if delay is None else f"{delay:.1f} s (~{delay * rate:.0f} events)")
    for key, value in summary.__dict__.items():
        if key != "detection_delay_s":
            table.add_row(
                key.replace("_", " "),
                "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value)),
            )
    console.print(table)
    console.print(
        f"target: onset to new champion serving <= 60 s; measured {summary.onset_to_new_champion_serving_s}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="Runs per online detector (part 1).")
    parser.add_argument("--stationary", type=int, default=30_000, help="Stationary events (part 2).")
    parser.add_argument("--rate", type=float, default=100.0, help="Events per second of the live stream.")
    parser.add_argument("--no-stack", action="store_true", help="Skip part 3 (the whole loop).")
    args = parser.parse_args()
    configure_logging(LogSettings(format="console", level="WARNING"))
    np.seterr(all="ignore")
    detectors(args.runs)
    stationary(args.stationary, args.rate)
    if not args.no_stack:
        whole_loop(args.rate)


if __name__ == "__main__":
    main()
