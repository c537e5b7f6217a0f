"""``driftline produce``: publish raw transactions at a given rate, and their labels when due.

:class:`Publisher` is the reusable part (the demo drives it in-process); the click command
wraps it with a progress bar.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import click
import structlog
from confluent_kafka import Message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from driftline.kit.codec import utcnow
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, Headers, KafkaProducer
from driftline.kit.settings import KafkaSettings
from driftline.kit.topics import FEEDBACK, TRANSACTIONS_RAW, Topic
from driftline.services.ingestion.traffic import Encoding, Kind, RawMessage, TrafficConfig, replay, simulated
from driftline.simulator import SimulatorConfig, feedback_label

log = structlog.get_logger(__name__)

#: Per-card mean gap between legitimate transactions that keeps velocity features informative.
_CARD_GAP_S = 25.0


class Sender(Protocol):
    """What the publisher needs of a producer (``driftline.kit.kafka.KafkaProducer`` is one)."""

    def send(
        self, topic: Topic | str, value: bytes, key: bytes | str | None = None, headers: Headers | None = None
    ) -> concurrent.futures.Future[Message]: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


@dataclass
class PublishStats:
    """What a run published so far."""

    sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    #: Expected dead-letter reason code -> how many garbage messages were sent with it.
    garbage_reasons: Counter[str] = field(default_factory=Counter)
    feedback: int = 0
    failed: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Publisher:
    """Sends raw messages at a steady rate and each valid simulated event's label once it is due.

    A label is due when the stream's event time (the newest event sent) passes its label time;
    when the messages run out, the remaining labels go out in label-time order (when ``rate`` is
    set, each waits until its due time, with event time mapped onto the wall clock).
    """

    def __init__(
        self,
        sender: Sender,
        *,
        raw_topic: Topic = TRANSACTIONS_RAW,
        feedback_topic: Topic = FEEDBACK,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self._wall = wall
        self._sender = sender
        self._raw = raw_topic
        self._feedback = feedback_topic
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def run(
        self,
        messages: Iterable[RawMessage],
        *,
        rate: float | None = None,
        feedback: bool = True,
        stop: threading.Event | None = None,
        on_progress: Callable[[PublishStats], None] | None = None,
        progress_every: int = 250,
        flush_timeout_s: float = 60.0,
        follow_event_time: bool = False,
    ) -> PublishStats:
        """Publish everything (or until ``stop`` is set); flush; return what was sent.

        ``rate``: messages per second; None or 0 for as fast as the producer takes them.
        ``follow_event_time``: instead, send each simulated event once the wall clock reaches its
        event time: a stream that starts in the past catches up as fast as it can (a warm-up
        that fills the feature windows), then runs in real time.
        """
        stats = PublishStats()
        pending: list[tuple[datetime, int, RawMessage]] = []
        started = self._clock()
        interval = 1.0 / rate if rate else 0.0
        stream_time: datetime | None = None
        stream_time_at = started
        for i, message in enumerate(messages):
            if stop is not None and stop.is_set():
                break
            if follow_event_time:
                if message.event is not None:
                    ahead = (message.event.event_time - self._wall()).total_seconds()
                    if ahead > 0.002:
                        self._sleep(ahead)
            elif interval:
                ahead = started + i * interval - self._clock()
                if ahead > 0.002:
                    self._sleep(ahead)
            self._send(self._raw, message.value, message.key, message.headers, stats)
            stats.sent += 1
            stats.by_kind[message.kind] += 1
            if message.expected_reason is not None:
                stats.garbage_reasons[message.expected_reason] += 1
            if message.event is not None:
                stream_time, stream_time_at = message.event.event_time, self._clock()
                if feedback:
                    heapq.heappush(pending, (message.event.label_time, message.event.index, message))
            if stream_time is not None:
                while pending and pending[0][0] <= stream_time:
                    self._send_label(heapq.heappop(pending)[2], stats)
            if on_progress is not None and stats.sent % progress_every == 0:
                stats.elapsed_s = self._clock() - started
                on_progress(stats)
        while pending and not (stop is not None and stop.is_set()):
            due, _, message = heapq.heappop(pending)
            if follow_event_time:
                wait = (due - self._wall()).total_seconds()
                if wait > 0:
                    self._sleep(wait)
            elif interval and stream_time is not None:
                wait = (due - stream_time).total_seconds() - (self._clock() - stream_time_at)
                if wait > 0:
                    self._sleep(wait)
            self._send_label(message, stats)
        self._sender.flush(flush_timeout_s)
        stats.elapsed_s = self._clock() - started
        if on_progress is not None:
            on_progress(stats)
        log.info("publish_finished", sent=stats.sent, feedback=stats.feedback, failed=stats.failed)
        return stats

    def _send_label(self, message: RawMessage, stats: PublishStats) -> None:
        assert message.event is not None
        label = feedback_label(message.event)
        self._send(
            self._feedback,
            label.SerializeToString(),
            label.entity_id.encode(),
            [(CONTENT_TYPE, PROTOBUF.encode())],
            stats,
        )
        stats.feedback += 1

    def _send(
        self, topic: Topic, value: bytes, key: bytes | None, headers: Headers, stats: PublishStats
    ) -> None:
        future = self._sender.send(topic, value, key, headers)

        def done(f: concurrent.futures.Future[Message]) -> None:
            if f.exception() is not None:
                with self._lock:
                    stats.failed += 1

        future.add_done_callback(done)


def live_traffic(
    *,
    seed: int,
    count: int,
    rate: float | None,
    cards: int | None = None,
    fraud_rate: float = 0.03,
    covariate_drift_at: int | None = None,
    concept_drift_at: int | None = None,
    garbage_rate: float = 0.0,
    duplicate_rate: float = 0.0,
    label_delay_s: float = 5.0,
    encoding: Encoding = Encoding.JSON,
    now: datetime | None = None,
) -> TrafficConfig:
    """A traffic config whose event times track the wall clock.

    Paced (``rate`` set): events start now, one every ``1/rate`` s of event time. Unpaced: the
    default gap, and the stream ends now (so every event sits inside the contract's time window).
    ``cards`` defaults to a number that keeps each card ~25 s apart, as the features expect.
    """
    now = now or utcnow()
    # Duplicates take a message slot but no simulated event: keep event time on the wall clock.
    gap = 1.0 / (rate * (1.0 - duplicate_rate)) if rate else SimulatorConfig().mean_gap_s
    start = now if rate else now - timedelta(seconds=count * gap)
    return TrafficConfig(
        simulator=SimulatorConfig(
            seed=seed,
            n_cards=cards or max(500, round(_CARD_GAP_S / gap)),
            fraud_rate=fraud_rate,
            start=start,
            mean_gap_s=gap,
            covariate_drift_at=covariate_drift_at,
            concept_drift_at=concept_drift_at,
            label_delay_s=label_delay_s,
        ),
        count=count,
        garbage_rate=garbage_rate,
        duplicate_rate=duplicate_rate,
        encoding=encoding,
    )


@click.command()
@click.option(
    "--file",
    "file_",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Replay a .jsonl (one raw message per line) or .csv file instead of simulating.",
)
@click.option("--seed", default=7, show_default=True, help="Simulator seed: the same seed, the same stream.")
@click.option(
    "--count", default=10_000, show_default=True, help="Messages to publish (garbage, duplicates included)."
)
@click.option(
    "--rate", default=200.0, show_default=True, help="Messages per second; 0 for as fast as possible."
)
@click.option(
    "--cards", type=int, default=None, help="Simulated cards (default: about 25 s between a card's events)."
)
@click.option("--fraud-rate", default=0.03, show_default=True, help="Share of fraudulent events.")
@click.option(
    "--covariate-drift-at", type=int, default=None, help="Simulated-event index where the inputs shift."
)
@click.option(
    "--concept-drift-at",
    type=int,
    default=None,
    help="Simulated-event index where the fraud pattern changes.",
)
@click.option("--garbage-rate", default=0.0, show_default=True, help="Share of messages replaced by garbage.")
@click.option(
    "--duplicate-rate", default=0.0, show_default=True, help="Share of messages re-sent as duplicates."
)
@click.option(
    "--label-delay-s", default=5.0, show_default=True, help="Mean delay of a label after its event."
)
@click.option(
    "--feedback/--no-feedback", default=True, show_default=True, help="Publish ground-truth labels."
)
@click.option("--encoding", type=click.Choice([e.value for e in Encoding]), default="json", show_default=True)
@click.option("--topic-prefix", default="", help="Prefix for the topic names (isolated test topics).")
@click.option(
    "--warmup-s",
    default=0.0,
    show_default=True,
    help="Start the stream this many seconds in the past and catch up as fast as possible, so the "
    "feature windows are full when real-time traffic begins (needs --rate).",
)
def produce(
    file_: Path | None,
    seed: int,
    count: int,
    rate: float,
    cards: int | None,
    fraud_rate: float,
    covariate_drift_at: int | None,
    concept_drift_at: int | None,
    garbage_rate: float,
    duplicate_rate: float,
    label_delay_s: float,
    feedback: bool,
    encoding: str,
    topic_prefix: str,
    warmup_s: float,
) -> None:
    """Publish card transactions to the raw-transactions topic, and their labels to feedback."""
    raw_topic, feedback_topic = TRANSACTIONS_RAW, FEEDBACK
    if topic_prefix:
        raw_topic, feedback_topic = (
            raw_topic.namespaced(topic_prefix),
            feedback_topic.namespaced(topic_prefix),
        )
    total: int | None
    if file_ is not None:
        messages: Iterable[RawMessage] = replay(file_)
        total = None
    else:
        try:
            config = live_traffic(
                seed=seed,
                count=count,
                rate=rate,
                cards=cards,
                fraud_rate=fraud_rate,
                covariate_drift_at=covariate_drift_at,
                concept_drift_at=concept_drift_at,
                garbage_rate=garbage_rate,
                duplicate_rate=duplicate_rate,
                label_delay_s=label_delay_s,
                encoding=Encoding(encoding),
                now=utcnow() - timedelta(seconds=warmup_s) if warmup_s and rate else None,
            )
        except ValueError as err:
            raise click.BadParameter(str(err)) from err
        messages = simulated(config, now=utcnow())
        total = count
    producer = KafkaProducer(KafkaSettings())
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("[bold]produce"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.0f} msg/s  labels {task.fields[labels]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("produce", total=total, rate=0.0, labels=0)

            def show(s: PublishStats) -> None:
                progress.update(task, completed=s.sent, rate=s.rate, labels=s.feedback)

            stats = Publisher(producer, raw_topic=raw_topic, feedback_topic=feedback_topic).run(
                messages,
                rate=rate or None,
                feedback=feedback,
                on_progress=show,
                follow_event_time=bool(warmup_s and rate),
            )
    finally:
        producer.close()
    table = Table("published", "messages")
    for kind in Kind:
        if stats.by_kind[kind]:
            table.add_row(kind.value, str(stats.by_kind[kind]))
    table.add_row("feedback labels", str(stats.feedback))
    table.add_row("delivery failures", str(stats.failed))
    table.add_row("rate (msg/s)", f"{stats.rate:.0f}")
    console.print(table)
    if stats.failed:
        raise click.ClickException(f"{stats.failed} messages were not acknowledged by the broker")
