"""Sustained events/s through ingestion vs a bare confluent-kafka consume -> produce loop.

Both read the same pre-filled raw topic on the real broker (``make up``), in the same run, one
after the other (alternating, ``--rounds`` times each), with the same batch size and the same
delivery discipline: produce every message with an idempotent ``acks=all`` producer, wait for
the acknowledgements, commit the batch. The bare loop copies bytes; ingestion decodes,
validates, de-duplicates in Redis, normalises and dead-letters. Throughput is measured from the
first committed batch to the last, so consumer-group joins do not count.

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

console = Console()


class Clock:
    """First and last commit times and how many messages were committed after the first batch."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.after_first = 0
        self.total = 0
        self.done = threading.Event()

    def committed(self, n: int, expected: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.after_first += n
        self.last = now
        self.total += n
        if self.total >= expected:
            self.done.set()

    @property
    def rate(self) -> float:
        if self.first is None or self.last <= self.first:
            return 0.0
        return self.after_first / (self.last - self.first)


def bare_loop(kafka: KafkaSettings, source: Topic, sink: str, expected: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"bench-bare-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
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
    return clock.rate


def passthrough(kafka: KafkaSettings, source: Topic, sink: str, expected: int) -> float:
    """The framework alone: ConsumerLoop + KafkaProducer with a handler that forwards the bytes."""
    clock = Clock()
    producer = KafkaProducer(kafka)
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
    return clock.rate


def ingestion(settings: Settings, raw: Topic, clean: Topic, expected: int) -> float:
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
    return clock.rate


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

        bare_rates: list[float] = []
        passthrough_rates: list[float] = []
        ingestion_rates: list[float] = []
        for round_ in range(args.rounds):
            with console.status(f"round {round_ + 1}: bare consume -> produce loop"):
                bare_rates.append(bare_loop(kafka, raw, bare_sink.name, args.events))
            with console.status(f"round {round_ + 1}: ConsumerLoop pass-through"):
                passthrough_rates.append(passthrough(kafka, raw, bare_sink.name, args.events))
            # Every round de-duplicates from scratch, like the first time these events are seen.
            delete_keys(client, prefix)
            with console.status(f"round {round_ + 1}: ingestion"):
                ingestion_rates.append(ingestion(settings, raw, clean, args.events))
    finally:
        delete_keys(client, prefix)
        client.close()
        delete_topics(kafka, topics)

    table = Table(title=f"ingestion throughput, {args.events} messages, batch {args.batch_size}")
    for column in ("round", "bare loop (msg/s)", "kit pass-through (msg/s)", "ingestion (msg/s)", "ratio"):
        table.add_column(column, justify="left" if column == "round" else "right")
    rows = list(zip(bare_rates, passthrough_rates, ingestion_rates, strict=True))
    for i, (b, p, g) in enumerate(rows, start=1):
        table.add_row(str(i), f"{b:,.0f}", f"{p:,.0f}", f"{g:,.0f}", f"{g / b:.2f}x")
    bare, through, ingest = (statistics.median(r) for r in (bare_rates, passthrough_rates, ingestion_rates))
    table.add_row("median", f"{bare:,.0f}", f"{through:,.0f}", f"{ingest:,.0f}", f"{ingest / bare:.2f}x")
    console.print(table)
    console.print(
        f"ingestion / bare loop = {ingest / bare:.2f}x (target >= 0.5x); "
        f"kit ConsumerLoop pass-through / bare loop = {through / bare:.2f}x"
    )


if __name__ == "__main__":
    main()
