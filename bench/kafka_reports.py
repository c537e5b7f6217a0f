"""CPU per produced message: delivery reports for every message vs for failures only.

``KafkaProducer(reports="errors")`` (ingestion's producer, which its consumer loop flushes to
learn of a batch's acknowledgements) against the default ``reports="all"``, which calls a Python
callback per acknowledged message. Both produce the same messages (a clean event's size, key
and content-type header, a per-message callback as the consumer loop passes it) to the real
broker (``make up``), interleaved round by round, and flush after each round. CPU is this
process's, every thread (the caller's, the poll thread's and librdkafka's), per message, from
the first produce to the end of the flush.

    .venv/bin/python bench/kafka_reports.py [--messages 30000] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

from confluent_kafka import KafkaError, Message
from rich.console import Console
from rich.table import Table

from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, DeliveryReports, KafkaProducer
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import TRANSACTIONS_CLEAN

console = Console()
_MODES: tuple[DeliveryReports, ...] = ("all", "errors")


def _on_delivery(err: KafkaError | None, msg: Message) -> None:
    """Stands for the consumer loop's callback (which counts, under a lock)."""


def produce_round(producer: KafkaProducer, topic: str, messages: int) -> float:
    """CPU µs per message to produce ``messages`` and flush them."""
    value = b"x" * 180
    headers = [(CONTENT_TYPE, PROTOBUF.encode())]
    keys = [f"card-{i:06d}".encode() for i in range(1000)]
    started = time.process_time()
    for i in range(messages):
        producer.produce(topic, value, keys[i % 1000], headers, _on_delivery)
    producer.flush(60)
    return (time.process_time() - started) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    kafka = KafkaSettings()
    topic = TRANSACTIONS_CLEAN.namespaced(unique_prefix())
    create_test_topics(kafka, [topic])
    producers = {mode: KafkaProducer(kafka, reports=mode) for mode in _MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in _MODES}
    try:
        for round_ in range(args.rounds):
            with console.status(f"round {round_ + 1} of {args.rounds}"):
                for mode, producer in producers.items():
                    cpu[mode].append(produce_round(producer, topic.name, args.messages))
    finally:
        for producer in producers.values():
            producer.close()
        delete_topics(kafka, [topic])

    table = Table(title=f"produce + flush, CPU µs per message ({args.messages} messages a round)")
    table.add_column("round")
    for mode in _MODES:
        table.add_column(f'reports="{mode}"', justify="right")
    table.add_column("ratio", justify="right")
    for i, (every, errors) in enumerate(zip(cpu["all"], cpu["errors"], strict=True), 1):
        table.add_row(str(i), f"{every:.2f}", f"{errors:.2f}", f"{errors / every:.2f}x")
    ratios = [e / a for a, e in zip(cpu["all"], cpu["errors"], strict=True)]
    table.add_row(
        "median", *(f"{statistics.median(cpu[m]):.2f}" for m in _MODES), f"{statistics.median(ratios):.2f}x"
    )
    console.print(table)
    console.print(
        f'reports="errors" / reports="all" CPU per message: median of the rounds\' ratios '
        f"{statistics.median(ratios):.2f}x (lower is cheaper)"
    )


if __name__ == "__main__":
    main()
