"""The features pipeline: events/s vs a bare aiokafka consume loop, and freshness at 1k events/s.

On the real broker and Redis (``make up``), in one run:

1. A namespaced clean-transactions topic is pre-filled with ``--events`` protobuf events over
   ``--cards`` cards (keyed by card, as ingestion writes them).
2. Baseline: a bare aiokafka consumer reads it all (``getmany`` loop, nothing else), timed from
   its first record to its last.
3. The features service (``python -m driftline.services.features``, default settings: batches of
   500, Redis state round trips, vectors published with acks, offline sink on) processes the same
   topic; its rate is timed from the first published vector to the last (broker timestamps), so
   start-up and the group join do not count.
4. Freshness: with the service still running, events are produced at ``--rate`` per second for
   ``--seconds`` with event time = send time. Freshness = the published vector's broker
   timestamp minus the event time (the vector is sent after the Redis write commits, so it
   bounds "visible in Redis" from above); the service's own histogram
   (``driftline_features_freshness_seconds``) is read too.

    .venv/bin/python bench/features_pipeline.py [--events 20000] [--rate 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from driftline.events.v1 import transaction_pb2
from driftline.featurestore.events import epoch_seconds
from driftline.features.v1 import features_pb2
from driftline.kit.codec import to_timestamp
from driftline.kit.kafka import KafkaProducer
from driftline.kit.settings import KafkaSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import FEATURE_VECTORS, TRANSACTIONS_CLEAN, Topic

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def transaction(i: int, cards: int, event_time: datetime, rng: random.Random) -> transaction_pb2.CleanTransaction:
    message = transaction_pb2.CleanTransaction(
        event_id=f"bench-{i:08d}",
        card_id=f"card-{rng.randrange(cards):04d}",
        merchant_id=f"m{rng.randrange(200)}",
        amount=round(rng.lognormvariate(3.5, 1.0), 2),
        currency="EUR",
        merchant_category=rng.choice(["grocery", "fuel", "electronics", "travel"]),
        country=rng.choice(["NL", "NL", "NL", "DE"]),
        channel=rng.choice(["pos", "online"]),
    )
    message.event_time.CopyFrom(to_timestamp(event_time))
    return message


def prefill(settings: KafkaSettings, topic: Topic, count: int, cards: int) -> None:
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(hours=1)
    producer = KafkaProducer(settings)
    for i in range(count):
        message = transaction(i, cards, start + timedelta(milliseconds=i), rng)
        producer.send(topic, message.SerializeToString(), key=message.card_id)
    producer.close()


async def bare_consume(settings: KafkaSettings, topic: str, count: int) -> float:
    """Events/s of a bare aiokafka getmany loop over the whole topic (first record to last)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"bench-bare-{unique_prefix()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen, first = 0, 0.0
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batches.values():
                if records and not first:
                    first = time.perf_counter()
                seen += len(records)
        last = time.perf_counter()
        await consumer.commit()
    finally:
        await consumer.stop()
    return (count - 1) / (last - first)


def read_vectors(settings: KafkaSettings, topic: str, expected: int, timeout_s: float) -> list[tuple[float, float]]:
    """(broker timestamp s, vector event time s) of the first ``expected`` vectors."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-reader-{unique_prefix()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[float, float]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=5000, timeout=0.5):
                if message.error() is None:
                    vector = features_pb2.FeatureVector.FromString(message.value())
                    out.append((message.timestamp()[1] / 1000, epoch_seconds(vector.event_time)))
    finally:
        consumer.close()
    return out


def histogram(port: int, name: str) -> dict[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Prometheus-style histogram_quantile over the increase between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank, previous_bound, previous_count = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / max(count - previous_count, 1e-9)
        previous_bound, previous_count = bound, count
    return bounds[-2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events pre-filled for the throughput run")
    parser.add_argument("--cards", type=int, default=500, help="distinct cards")
    parser.add_argument("--rate", type=int, default=1000, help="events/s for the freshness run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the freshness run")
    args = parser.parse_args()

    kafka_settings, redis_settings = KafkaSettings(), RedisSettings()
    prefix = unique_prefix()
    source, vectors = TRANSACTIONS_CLEAN.namespaced(prefix), FEATURE_VECTORS.namespaced(prefix)
    key_prefix = prefix.rstrip(".")
    workdir = Path(tempfile.mkdtemp(prefix="dl-bench-features-"))
    create_test_topics(kafka_settings, [source, vectors])
    proc: subprocess.Popen[bytes] | None = None
    try:
        console.print(f"pre-filling {args.events:,} events...")
        prefill(kafka_settings, source, args.events, args.cards)
        bare_rate = asyncio.run(bare_consume(kafka_settings, source.name, args.events))

        port = free_port()
        env = dict(
            os.environ,
            DRIFTLINE_FEATURES_TOPIC_PREFIX=prefix,
            DRIFTLINE_FEATURES_APP_ID=f"{prefix}features",
            DRIFTLINE_FEATURES_KEY_PREFIX=key_prefix,
            DRIFTLINE_FEATURES_OFFLINE_ROOT=str(workdir / "offline"),
            DRIFTLINE_FEATURES_DATA_DIR=str(workdir / "faust"),
            DRIFTLINE_FEATURES_WEB_ENABLED="false",
            DRIFTLINE_FEATURES_METRICS_PORT=str(port),
            DRIFTLINE_LOG_LEVEL="WARNING",
        )
        log = (workdir / "features.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "driftline.services.features"], env=env, stdout=log, stderr=log, cwd=ROOT)
        console.print("features service processing the pre-filled topic...")
        stamps = read_vectors(kafka_settings, vectors.name, args.events, timeout_s=300)
        if len(stamps) < args.events:
            raise SystemExit(f"only {len(stamps)} of {args.events} vectors arrived; see {workdir / 'features.log'}")
        times = sorted(t for t, _ in stamps)
        service_rate = (len(times) - 1) / (times[-1] - times[0])

        console.print(f"freshness run: {args.rate} events/s for {args.seconds:.0f} s...")
        before = histogram(port, "driftline_features_freshness_seconds")
        rng = random.Random(11)
        producer = KafkaProducer(kafka_settings)
        total = int(args.rate * args.seconds)
        started = time.perf_counter()
        for i in range(total):
            due = started + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            message = transaction(args.events + i, args.cards, datetime.now(UTC), rng)
            producer.send(source, message.SerializeToString(), key=message.card_id)
        producer.close()
        achieved = total / (time.perf_counter() - started)
        live_from = epoch_seconds(datetime.now(UTC)) - (time.perf_counter() - started) - 1
        everything = read_vectors(kafka_settings, vectors.name, args.events + total, timeout_s=120)
        live = [(published, event) for published, event in everything if event >= live_from]
        time.sleep(1.0)
        after = histogram(port, "driftline_features_freshness_seconds")
        lags = np.array([published - event for published, event in live])
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        delete_topics(kafka_settings, [source, vectors])
        client = redis.Redis.from_url(redis_settings.url)
        for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
            client.delete(key)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title="Features pipeline (real broker and Redis, same run)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("bare aiokafka consume loop, events/s", f"{bare_rate:,.0f}")
    table.add_row("features service, events/s", f"{service_rate:,.0f}")
    table.add_row("ratio (service / bare)", f"{service_rate / bare_rate:.3f}x  (target >= 0.5x)")
    table.add_row("freshness run: offered events/s", f"{achieved:,.0f}")
    table.add_row("event time -> vector published, p50 (ms)", f"{np.percentile(lags, 50) * 1000:,.1f}")
    table.add_row("event time -> vector published, p99 (ms)", f"{np.percentile(lags, 99) * 1000:,.1f}")
    table.add_row(
        "event time -> visible in Redis, p99 (ms, service histogram)",
        f"{bucket_quantile(before, after, 0.99) * 1000:,.1f}",
    )
    console.print(table)


if __name__ == "__main__":
    main()
