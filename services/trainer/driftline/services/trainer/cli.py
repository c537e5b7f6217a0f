"""``driftline train``: bootstrap the first champion, reproduce a version, or ask for a retrain now."""

from __future__ import annotations

import getpass
import sys
import time
from datetime import UTC, datetime, timedelta

import click
from rich.console import Console
from rich.table import Table

from driftline.kit.errors import DriftlineError, NotFound
from driftline.kit.kafka import KafkaProducer
from driftline.services.trainer.app import TrainerCore, request_retrain
from driftline.services.trainer.bootstrap import simulate, train_initial, write_history
from driftline.services.trainer.config import Settings
from driftline.services.trainer.reproduce import reproduce
from driftline.services.trainer.runner import RunResult
from driftline.services.trainer.triggers import MANUAL, Trigger, TriggerBatch
from driftline.simulator import SimulatorConfig


@click.command()
@click.option(
    "--initial", is_flag=True, help="Bootstrap: simulate history, train and register the first champion."
)
@click.option(
    "--reproduce",
    "reproduce_version",
    type=int,
    default=None,
    metavar="VERSION",
    help="Rebuild VERSION's training set from its lineage, retrain, and compare.",
)
@click.option("--now", "now_", is_flag=True, help="Request a retrain (published for the running trainer).")
@click.option("--in-process", is_flag=True, help="With --now: retrain in this process instead, and report.")
@click.option(
    "--events",
    type=click.IntRange(min=100),
    default=30_000,
    show_default=True,
    help="--initial: simulated events of history.",
)
@click.option("--sim-seed", type=int, default=7, show_default=True, help="--initial: simulator seed.")
@click.option(
    "--n-cards", type=click.IntRange(min=1), default=500, show_default=True, help="--initial: cards."
)
@click.option(
    "--fraud-rate",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.03,
    show_default=True,
    help="--initial: share of fraud.",
)
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="--initial: event time (UTC) of the first simulated event; default: so that history ends now.",
)
@click.option(
    "--warmup-s",
    type=click.FloatRange(min=0),
    default=None,
    help="--initial: leading seconds of history left out of training while the feature windows "
    "fill; default: the feature set's longest window (at most half the history).",
)
@click.option(
    "--force", is_flag=True, help="--initial: train even though a champion exists (then the gate decides)."
)
def train(
    initial: bool,
    reproduce_version: int | None,
    now_: bool,
    in_process: bool,
    events: int,
    sim_seed: int,
    n_cards: int,
    fraud_rate: float,
    start: datetime | None,
    warmup_s: float | None,
    force: bool,
) -> None:
    """Train the model: --initial, --reproduce VERSION or --now (settings: DRIFTLINE_TRAINER_*)."""
    chosen = [
        name
        for name, on in (
            ("--initial", initial),
            ("--reproduce", reproduce_version is not None),
            ("--now", now_),
        )
        if on
    ]
    if len(chosen) != 1:
        raise click.UsageError("choose exactly one of --initial, --reproduce VERSION, --now")
    settings = Settings()
    console = Console()
    if now_ and not in_process:
        producer = KafkaProducer(settings.kafka)
        try:
            request_id = request_retrain(producer, settings.model_name, requested_by=_user())
        finally:
            producer.close(10)
        console.print(f"retrain requested: [bold]{request_id}[/] for model {settings.model_name}")
        return
    core = TrainerCore(settings)
    try:
        if initial:
            code = _initial(
                core,
                console,
                events=events,
                seed=sim_seed,
                n_cards=n_cards,
                fraud_rate=fraud_rate,
                start=start,
                warmup_s=warmup_s,
                force=force,
            )
        elif reproduce_version is not None:
            code = _reproduce(core, console, reproduce_version)
        else:
            batch = TriggerBatch(
                (
                    Trigger(
                        MANUAL,
                        f"cli-{int(time.time() * 1000)}",
                        settings.model_name,
                        time.time(),
                        f"requested by {_user()}",
                    ),
                )
            )
            code = _report(console, core.runner.run(batch))
    except DriftlineError as err:
        console.print(f"[red]{err.code}[/]: {err}")
        code = 1
    finally:
        core.close()
    sys.exit(code)


def _initial(
    core: TrainerCore,
    console: Console,
    *,
    events: int,
    seed: int,
    n_cards: int,
    fraud_rate: float,
    start: datetime | None,
    warmup_s: float | None,
    force: bool,
) -> int:
    settings = core.settings
    try:
        champion = core.registry.get_version(settings.model_name, alias=settings.champion_alias)
        if not force:
            console.print(
                f"{settings.model_name} already has a champion (v{champion.version}); "
                "use --force to train anyway"
            )
            return 2
    except NotFound:
        pass
    config = SimulatorConfig(seed=seed, n_cards=n_cards, fraud_rate=fraud_rate)
    if start is None:
        span = timedelta(seconds=events * config.mean_gap_s + 60)
        start = (datetime.now(UTC) - span).replace(microsecond=0)
    config = SimulatorConfig(
        seed=seed, n_cards=n_cards, fraud_rate=fraud_rate, start=start.replace(tzinfo=UTC)
    )
    run_id, history_events = simulate(config, events)
    history = write_history(core.store, core.labels, history_events, run_id=run_id)
    console.print(
        f"history: {history.events} events ({history.frauds} fraud) from {history.start.isoformat()} "
        f"to {history.end.isoformat()}"
    )
    span = (history.end - history.start).total_seconds()
    # By default a short history keeps at least half of itself for training.
    warmup = min(core.store.feature_set.max_window_s, span / 2) if warmup_s is None else warmup_s
    console.print(f"training on the history after its {warmup:.0f}s warm-up (feature windows filling)")
    return _report(console, train_initial(core.runner, core.dataset, history, warmup_s=warmup))


def _reproduce(core: TrainerCore, console: Console, version: int) -> int:
    settings = core.settings
    result = reproduce(
        core.registry, core.dataset, settings.model_name, version, tolerance=settings.parity_tolerance
    )
    table = Table("check", "result", title=f"{settings.model_name} v{version} reproduced")
    table.add_row("training rows", str(result.rows))
    table.add_row("content hash", f"{result.data_hash} (matches lineage)")
    table.add_row("max |score diff|", f"{result.max_abs_diff:.3g}")
    table.add_row("artifact", "byte-identical" if result.identical_artifact else "scores match, bytes differ")
    console.print(table)
    # One unwrapped line for scripts (rich folds long hashes to the terminal's width).
    click.echo(
        f"reproduced {settings.model_name} v{version}: data_hash={result.data_hash} rows={result.rows} "
        f"max_abs_diff={result.max_abs_diff:.3g} artifact_identical={str(result.identical_artifact).lower()}"
    )
    return 0


def _report(console: Console, result: RunResult) -> int:
    table = Table("field", "value", title=f"run {result.run_id}")
    table.add_row("outcome", result.outcome_name)
    table.add_row("reason", result.reason)
    table.add_row("version", str(result.version or "-"))
    table.add_row("champion", f"v{result.champion_before} -> v{result.champion_after}")
    table.add_row("data hash", result.data_hash or "-")
    for key in ("holdout_auc", "champion_holdout_auc", "holdout_f1", "train_rows", "holdout_rows"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.4g}")
    table.add_row("seconds", f"{result.duration_s:.2f}")
    console.print(table)
    click.echo(
        f"run {result.run_id}: outcome={result.outcome_name} version={result.version} "
        f"data_hash={result.data_hash or '-'} seconds={result.duration_s:.2f}"
    )
    return 1 if result.outcome_name == "failed" else 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
