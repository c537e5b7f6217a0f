"""The features pipeline: events/s vs a bare aiokafka consume loop, and freshness at 1k events/s.

On the real broker and Redis (``make up``), in one run:

1. A namespaced clean-transactions topic is pre-filled with ``--events`` protobuf events over
   ``--cards`` cards (keyed by card, as ingestion writes them).
2. Baseline: a bare aiokafka consumer reads it all (``getmany`` loop, nothing else), timed from
   its first record to its last. For reference, a no-op faust agent (``noack_take`` + ack, no
   work: faust's own floor, with the service's GC tuning and event loop) reads it too, timed
   from its first batch (after the group join) to its last full one.
3. The features service (``python -m driftline.services.features``, default settings: batches of
   500, Redis state round trips, vectors published with acks, offline sink on) processes the same
   topic; its rate is timed from the first published vector to the last (broker timestamps), so
   start-up and the group join do not count. The CPU each used per event is printed too (from
   /proc): the rates move with the neighbours' load, the CPU per event much less.
4. Freshness: with the service still running, events are produced at each ``--rate`` per second
   (default 1000, then 300, the demo's rate) for ``--seconds`` with event time = send time.
   Freshness = the published vector's broker timestamp minus the event time (the vector is
   sent after the Redis write commits, so it bounds "visible in Redis" from above); the
   service's own histogram (``driftline_features_freshness_seconds``) is read too.

    .venv/bin/python bench/features_pipeline.py [--events 20000] [--rate 1000 300] [--seconds 15]
                                                [--event-loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
from driftline.features.v1 import features_pb2
from driftline.featurestore.events import epoch_seconds
from driftline.kit.codec import to_timestamp
from driftline.kit.kafka import KafkaProducer
from driftline.kit.redis_clients import delete_keys
from driftline.kit.settings import KafkaSettings, RedisSettings
from driftline.kit.testing import create_test_topics, delete_topics, free_port, unique_prefix
from driftline.kit.topics import FEATURE_VECTORS, TRANSACTIONS_CLEAN, Topic

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def transaction(
    i: int, cards: int, event_time: datetime, rng: random.Random
) -> transaction_pb2.CleanTransaction:
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


def read_vectors(
    settings: KafkaSettings, topic: str, expected: int, timeout_s: float
) -> list[tuple[float, float]]:
    """(broker timestamp s, vector event time s) of the first ``expected`` vectors."""
    consumer = Consumer(
        {
            **settings.connection(),
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


def counter(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


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
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / max(
                count - previous_count, 1e-9
            )
        previous_bound, previous_count = bound, count
    return bounds[-2]


NOOP_AGENT = """
import os, sys, time
import faust, mode.loop
prefix, topic, count, bootstrap, datadir, event_loop = sys.argv[1:7]
count = int(count)
if event_loop != "asyncio":
    mode.loop.use(event_loop)
app = faust.App(prefix + "noop", broker="kafka://" + bootstrap, value_serializer="raw", key_serializer="raw",
                topic_allow_declare=False, topic_disable_leader=True, web_enabled=False, datadir=datadir,
                consumer_auto_offset_reset="earliest")
source = app.topic(topic, value_type=bytes, internal=False, partitions=3)
seen = {"n": 0, "first": 0.0, "cpu": 0.0}

@app.agent(source)
async def noop(stream):
    async for batch in stream.noack_take(500, within=0.02):
        if not seen["first"]:
            seen["first"], seen["cpu"] = time.perf_counter(), time.process_time()
        else:
            seen["n"] += len(batch)
        for event in batch:
            await stream.ack(event)
        if seen["n"] + 500 >= count:
            rate = seen["n"] / (time.perf_counter() - seen["first"])
            cpu = (time.process_time() - seen["cpu"]) / seen["n"]
            os.write(2, f"RESULT {rate} {cpu}\\n".encode())
            os._exit(0)

sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
# As the features service does.
from driftline.kit.runtime import tune_gc
tune_gc()
app.main()
"""


def noop_faust(
    settings: KafkaSettings, prefix: str, topic: str, count: int, workdir: Path, event_loop: str
) -> tuple[float, float]:
    """Events/s and CPU seconds per event of a faust agent that only acks (after its first batch,
    so the group join does not count), with the service's GC tuning and event loop."""
    script = workdir / "noop_agent.py"
    script.write_text(NOOP_AGENT)
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            prefix,
            topic,
            str(count),
            settings.bootstrap_servers,
            str(workdir / "noop"),
            event_loop,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    for line in done.stderr.splitlines():
        if line.startswith("RESULT "):
            _, rate, cpu = line.split()
            return float(rate), float(cpu)
    raise SystemExit(f"no-op faust agent failed:\n{done.stderr[-2000:]}")


class CpuSampler:
    """CPU seconds a process has used, sampled every 50 ms from /proc (Linux), to tell CPU-bound
    from waiting: on a shared 2-core box, events/s alone mostly measures the neighbours."""

    def __init__(self, pid: int) -> None:
        self._stat = Path(f"/proc/{pid}/stat")
        self._tick = os.sysconf("SC_CLK_TCK")
        self._samples: list[tuple[float, float]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(0.05):
            try:
                fields = self._stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                return
            self._samples.append((time.time(), (int(fields[11]) + int(fields[12])) / self._tick))

    def between(self, start: float, end: float) -> float:
        """CPU seconds used between two wall-clock instants (nearest samples)."""

        def at(moment: float) -> float:
            return min(self._samples, key=lambda sample: abs(sample[0] - moment))[1]

        return at(end) - at(start)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="events pre-filled for the throughput run")
    parser.add_argument("--cards", type=int, default=500, help="distinct cards")
    parser.add_argument(
        "--rate",
        type=int,
        nargs="+",
        default=[1000, 300],
        help="events/s of the freshness runs (one run each)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each freshness run")
    parser.add_argument(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the no-op agent and the service (uvloop needs the uvloop package)",
    )
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
        noop_rate, noop_cpu = noop_faust(
            kafka_settings, prefix, source.name, args.events, workdir, args.event_loop
        )

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
            DRIFTLINE_FEATURES_EVENT_LOOP=args.event_loop,
            DRIFTLINE_LOG_LEVEL="WARNING",
        )
        log = (workdir / "features.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.services.features"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
        console.print("features service processing the pre-filled topic...")
        cpu = CpuSampler(proc.pid)
        stamps = read_vectors(kafka_settings, vectors.name, args.events, timeout_s=300)
        if len(stamps) < args.events:
            raise SystemExit(
                f"only {len(stamps)} of {args.events} vectors arrived; see {workdir / 'features.log'}"
            )
        times = sorted(t for t, _ in stamps)
        service_rate = (len(times) - 1) / (times[-1] - times[0])
        service_cpu = cpu.between(times[0], times[-1]) / (len(times) - 1)
        cpu.stop()

        # Let the offline sink drain the backlog first, so each freshness run starts steady.
        deadline = time.monotonic() + 120
        while (
            counter(port, "driftline_features_offline_rows_total") < args.events
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        freshness = []
        produced = args.events
        for rate in args.rate:
            console.print(f"freshness run: {rate} events/s for {args.seconds:.0f} s...")
            before = histogram(port, "driftline_features_freshness_seconds")
            rng = random.Random(rate)
            producer = KafkaProducer(kafka_settings)
            # The producer's own start (metadata, idempotent producer id: up to a second) is not the
            # pipeline's latency: one event through first, outside the measured window.
            first = transaction(produced, args.cards, datetime.now(UTC), rng)
            producer.send(source, first.SerializeToString(), key=first.card_id)
            producer.flush(30)
            produced += 1
            total = int(rate * args.seconds)
            started = time.perf_counter()
            live_from = epoch_seconds(datetime.now(UTC))
            for i in range(total):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                message = transaction(produced + i, args.cards, datetime.now(UTC), rng)
                producer.send(source, message.SerializeToString(), key=message.card_id)
            producer.close()
            achieved = total / (time.perf_counter() - started)
            produced += total
            everything = read_vectors(kafka_settings, vectors.name, produced, timeout_s=120)
            time.sleep(1.0)
            after = histogram(port, "driftline_features_freshness_seconds")
            lags = np.array([published - event for published, event in everything if event >= live_from])
            freshness.append((rate, achieved, lags, bucket_quantile(before, after, 0.99)))
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        delete_topics(kafka_settings, [source, vectors])
        client = redis.Redis.from_url(redis_settings.url)
        delete_keys(client, f"{key_prefix}:")
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title="Features pipeline (real broker and Redis, same run)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("bare aiokafka consume loop, events/s", f"{bare_rate:,.0f}")
    table.add_row("no-op faust agent (faust's floor), events/s", f"{noop_rate:,.0f}")
    table.add_row("  its CPU per event (µs)", f"{noop_cpu * 1e6:,.0f}")
    table.add_row("features service, events/s", f"{service_rate:,.0f}")
    table.add_row("  its CPU per event (µs; the offline sink lags behind)", f"{service_cpu * 1e6:,.0f}")
    table.add_row("ratio (service / bare aiokafka)", f"{service_rate / bare_rate:.3f}x  (target >= 0.5x)")
    table.add_row("ratio (no-op faust / bare aiokafka)", f"{noop_rate / bare_rate:.3f}x")
    table.add_row("ratio (service / no-op faust)", f"{service_rate / noop_rate:.2f}x")
    for rate, achieved, lags, histogram_p99 in freshness:
        table.add_row(f"freshness at {rate}/s: offered events/s", f"{achieved:,.0f}")
        table.add_row("  event time -> vector published, p50 (ms)", f"{np.percentile(lags, 50) * 1000:,.1f}")
        table.add_row("  event time -> vector published, p99 (ms)", f"{np.percentile(lags, 99) * 1000:,.1f}")
        table.add_row("  event time -> visible in Redis, p99 (ms, histogram)", f"{histogram_p99 * 1000:,.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
