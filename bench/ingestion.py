"""Sustained events/s through ingestion vs a bare confluent-kafka consume -> produce loop.

Both read the same pre-filled raw topic on the real broker (``make up``), in the same run, one
after the other (alternating, ``--rounds`` times each), with the same batch size and the same
delivery discipline: produce every message with an idempotent ``acks=all`` producer, wait for
the acknowledgements, commit the batch. The bare loop copies bytes; ingestion decodes,
validates, de-duplicates in Redis, normalises and dead-letters. Throughput is measured from the
first committed batch to the last, so consumer-group joins do not count. Over the same span it
prints this process's CPU per message (every thread: the loop's and its Kafka clients'; Redis
and the broker are other processes): what each loop costs, beside how fast it went.

    .venv/bin/python bench/ingestion.py [--events 100000] [--rounds 2] [--batch-size 2000]

``DRIFTLINE_INGESTION_NATIVE_GATE=false`` measures ingestion without its native fast path
(docs/adr/0006-native-ingestion-fast-path.md), for an A/B against the default.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import redis
import structlog
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from driftline.kit.kafka import ConsumerHooks, ConsumerLoop, KafkaProducer, Output
from driftline.kit.logging import configure_logging
from driftline.kit.redis_clients import delete_keys
from driftline.kit.runtime import tune_gc
from driftline.kit.settings import KafkaSettings, LogSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import TRANSACTIONS_CLEAN, TRANSACTIONS_RAW, Topic
from driftline.services.ingestion.app import IngestionApp
from driftline.services.ingestion.config import Settings
from driftline.services.ingestion.produce import Publisher, live_traffic
from driftline.services.ingestion.traffic import simulated

console = Console(width=160)
#: Batches a run must span at least: its rate is measured between its first and last commits.
MIN_BATCHES = 20


class Clock:
    """First and last commit times, this process's CPU time at each, and how many messages were
    committed after the first batch."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.after_first = 0
        self.total = 0
        self.done = threading.Event()

    def committed(self, n: int, expected: int) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.first is None:
            self.first, self.cpu_first = now, cpu
        else:
            self.after_first += n
        self.last, self.cpu_last = now, cpu
        self.total += n
        if self.total >= expected:
            self.done.set()

    @property
    def rate(self) -> float:
        if self.first is None or self.last <= self.first:
            return 0.0
        return self.after_first / (self.last - self.first)

    @property
    def cpu_per_message_us(self) -> float:
        """CPU of every thread of this process (the loop's and its Kafka clients') per message."""
        return (self.cpu_last - self.cpu_first) / self.after_first * 1e6 if self.after_first else 0.0


class Run(NamedTuple):
    rate: float
    cpu_us: float


def bare_loop(kafka: KafkaSettings, source: Topic, sink: str, expected: int) -> Run:
    consumer = Consumer(
        {
            **kafka.connection(),
            "group.id": f"bench-bare-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {
            **kafka.connection(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    clock = Clock()
    consumer.subscribe([source.name])
    try:
        while not clock.done.is_set():
            batch = [m for m in consumer.consume(kafka.batch_size, 0.5) if m.error() is None]
            if not batch:
                continue
            for m in batch:
                while True:
                    try:
                        producer.produce(sink, m.value(), m.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.flush()
            last: dict[tuple[str, int], int] = {}
            for m in batch:
                last[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0)
            consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()], asynchronous=False
            )
            clock.committed(len(batch), expected)
    finally:
        consumer.close()
    return Run(clock.rate, clock.cpu_per_message_us)


def passthrough(kafka: KafkaSettings, source: Topic, sink: str, expected: int) -> Run:
    """The framework alone: ConsumerLoop + KafkaProducer, set up as ingestion sets them up, with a
    handler that forwards the bytes."""
    clock = Clock()
    producer = KafkaProducer(kafka, reports="errors")
    loop = ConsumerLoop(
        kafka,
        group_id=f"bench-passthrough-{uuid.uuid4().hex}",
        topics=[source],
        handler=lambda batch: [[Output(sink, m.value() or b"", m.key())] for m in batch],
        producer=producer,
        hooks=ConsumerHooks(before_commit=lambda batch: clock.committed(len(batch), expected)),
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    clock.done.wait(timeout=900)
    loop.stop()
    thread.join(timeout=60)
    producer.close()
    return Run(clock.rate, clock.cpu_per_message_us)


def ingestion(settings: Settings, raw: Topic, clean: Topic, expected: int) -> Run:
    clock = Clock()

    def committed(batch: Sequence[Message]) -> None:
        clock.committed(len(batch), expected)

    run_settings = settings.copy(update={"group_id": f"bench-ingestion-{uuid.uuid4().hex}"})
    app = IngestionApp(
        run_settings, raw_topic=raw, clean_topic=clean, registry=CollectorRegistry(), before_commit=committed
    )
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    clock.done.wait(timeout=900)
    app.stop()
    thread.join(timeout=60)
    return Run(clock.rate, clock.cpu_per_message_us)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--garbage-rate", type=float, default=0.05)
    parser.add_argument("--duplicate-rate", type=float, default=0.02)
    args = parser.parse_args()
    if args.events < MIN_BATCHES * args.batch_size:
        # Rates run from the first commit to the last: with a few batches, pipelined ones commit
        # together and the span all but vanishes (5,000 events once printed 99x the bare loop).
        parser.error(f"--events must be at least {MIN_BATCHES} x --batch-size for the rates to mean anything")
    configure_logging(LogSettings(format="console", level="WARNING"))
    structlog.get_logger().warning("bench_started", events=args.events)

    kafka = KafkaSettings().copy(update={"batch_size": args.batch_size, "poll_timeout_s": 0.2})
    redis_settings = RedisSettings()
    prefix = unique_prefix()
    raw, clean = TRANSACTIONS_RAW.namespaced(prefix), TRANSACTIONS_CLEAN.namespaced(prefix)
    bare_sink = TRANSACTIONS_CLEAN.namespaced(prefix + "bare.")
    topics = [raw, clean, bare_sink]
    create_test_topics(kafka, topics)
    settings = Settings(kafka=kafka, redis=redis_settings, dedup_key_prefix=f"{prefix}dedup:", metrics_port=0)
    client = redis.Redis.from_url(redis_settings.url)
    try:
        now = datetime.now(UTC)
        traffic = live_traffic(
            seed=1,
            count=args.events,
            rate=None,
            garbage_rate=args.garbage_rate,
            duplicate_rate=args.duplicate_rate,
            now=now,
        )
        producer = KafkaProducer(kafka)
        with console.status(f"filling {raw.name} with {args.events} messages"):
            Publisher(producer, raw_topic=raw).run(simulated(traffic, now=now), feedback=False)
        producer.close()
        # Every loop below runs with the collector tuned as the services' entry points tune it.
        tune_gc()

        bare_runs: list[Run] = []
        passthrough_runs: list[Run] = []
        ingestion_runs: list[Run] = []
        for round_ in range(args.rounds):
            with console.status(f"round {round_ + 1}: bare consume -> produce loop"):
                bare_runs.append(bare_loop(kafka, raw, bare_sink.name, args.events))
            with console.status(f"round {round_ + 1}: ConsumerLoop pass-through"):
                passthrough_runs.append(passthrough(kafka, raw, bare_sink.name, args.events))
            # Every round de-duplicates from scratch, like the first time these events are seen.
            delete_keys(client, prefix)
            with console.status(f"round {round_ + 1}: ingestion"):
                ingestion_runs.append(ingestion(settings, raw, clean, args.events))
    finally:
        delete_keys(client, prefix)
        client.close()
        delete_topics(kafka, topics)

    table = Table(title=f"ingestion throughput, {args.events} messages, batch {args.batch_size}")
    columns = ("round", "bare loop (msg/s)", "kit pass-through (msg/s)", "ingestion (msg/s)", "ratio")
    cpu_columns = ("bare loop (CPU µs/msg)", "kit pass-through (CPU µs/msg)", "ingestion (CPU µs/msg)")
    for column in (*columns, *cpu_columns):
        table.add_column(column, justify="left" if column == "round" else "right")
    rounds = zip(bare_runs, passthrough_runs, ingestion_runs, strict=True)
    rows: list[tuple[str, Run, Run, Run]] = [(str(i), *runs) for i, runs in enumerate(rounds, 1)]
    bare, through, ingest = (
        Run(statistics.median(r.rate for r in runs), statistics.median(r.cpu_us for r in runs))
        for runs in (bare_runs, passthrough_runs, ingestion_runs)
    )
    rows.append(("median", bare, through, ingest))
    for name, b, p, g in rows:
        rates = [f"{r.rate:,.0f}" for r in (b, p, g)]
        cpus = [f"{r.cpu_us:.1f}" for r in (b, p, g)]
        table.add_row(name, *rates, f"{g.rate / b.rate:.2f}x", *cpus)
    console.print(table)
    console.print(
        f"ingestion / bare loop = {ingest.rate / bare.rate:.3f}x (target >= 0.5x); "
        f"kit ConsumerLoop pass-through / bare loop = {through.rate / bare.rate:.2f}x; "
        f"CPU per message (this process, all threads; Redis and the broker not counted): "
        f"ingestion {ingest.cpu_us:.1f} µs, bare loop {bare.cpu_us:.1f} µs"
    )


if __name__ == "__main__":
    main()
