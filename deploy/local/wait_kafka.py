"""Wait until a Kafka broker answers a metadata request, then report it.

    python deploy/local/wait_kafka.py --bootstrap 127.0.0.1:19092 --timeout 90 \
        [--libs DIR] [--cluster-id ID]

A listening port is not a ready broker: a KRaft node accepts connections before its controller
has elected itself and before it serves metadata. This asks for the cluster metadata until the
deadline and exits 0 once an answer names at least one broker (of cluster --cluster-id, when
given), 1 on timeout. With --libs (the broker's classpath directory) it also prints the broker
version read from the kafka-clients jar.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

_CLIENTS_JAR = re.compile(r"^kafka-clients-(?P<version>[0-9][^/]*)\.jar$")


def broker_version(libs: Path | None) -> str:
    """The version in the name of the kafka-clients jar on the broker's classpath, or "unknown"."""
    if libs is None or not libs.is_dir():
        return "unknown"
    for jar in sorted(libs.iterdir()):
        match = _CLIENTS_JAR.match(jar.name)
        if match:
            return match.group("version")
    return "unknown"


def wait(bootstrap: str, timeout_s: float, cluster_id: str | None = None) -> tuple[int, int]:
    """Block until a metadata request succeeds; return (broker count, topic count).

    With cluster_id, an answer from another cluster (a stranger on the port) does not count.
    """
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "driftline-wait-kafka",
            # The broker is expected to be down for a while; don't spam stderr meanwhile.
            "log_level": 0,
            "socket.connection.setup.timeout.ms": 2000,
            "reconnect.backoff.max.ms": 500,
        }
    )
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(last_error)
        try:
            metadata = admin.list_topics(timeout=min(5.0, max(remaining, 0.5)))
        except KafkaException as err:
            last_error = str(err.args[0]) if err.args else repr(err)
        else:
            if not metadata.brokers:
                last_error = "metadata named no broker"
            elif cluster_id is not None and metadata.cluster_id != cluster_id:
                last_error = f"cluster {metadata.cluster_id} answers, not {cluster_id}"
            else:
                return len(metadata.brokers), len(metadata.topics)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="host:port of the broker")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait at most")
    parser.add_argument("--libs", type=Path, default=None, help="broker classpath directory")
    parser.add_argument("--cluster-id", default=None, help="only this cluster counts as ready")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        brokers, topics = wait(args.bootstrap, args.timeout, args.cluster_id)
    except TimeoutError as err:
        sys.stderr.write(f"kafka at {args.bootstrap} not ready after {args.timeout:.0f}s: {err}\n")
        return 1
    sys.stdout.write(
        f"kafka {broker_version(args.libs)} ready at {args.bootstrap} "
        f"({brokers} broker, {topics} topics, {time.monotonic() - started:.1f}s)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
