"""Group offsets on a brand-new cluster, whose offsets topic does not exist yet.

confluent-kafka's ``list_consumer_group_offsets`` kills the process (SIGSEGV) there, and it did
so to ``make demo`` on every fresh machine: the demo's first step moves its consumer groups to
the end of their topics. The shared broker cannot show it (its offsets topic exists once any test
has committed), so this test starts a private broker with the stack's own script, on free
ports and in its own run directory, and runs the calls in a child process: a crash is then a
failed assertion, not a dead test run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

CALLS = """
import sys
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from driftline.kit.kafka import skip_to_end
from driftline.kit.lag import GroupLag
from driftline.kit.settings import KafkaSettings

servers = sys.argv[1]
admin = AdminClient({"bootstrap.servers": servers})
admin.create_topics([NewTopic("t", 2, 1)])["t"].result(30)
producer = Producer({"bootstrap.servers": servers})
for i in range(5):
    producer.produce("t", b"m", partition=0)
assert producer.flush(30) == 0
print("skipped", skip_to_end(servers, "demo-group"))
print("lag", sorted(GroupLag(KafkaSettings(bootstrap_servers=servers), "demo-group", ["t"]).read().items()))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def new_cluster(tmp_path: Path) -> Iterator[str]:
    """A single-node KRaft broker formatted for this test alone; stopped and deleted after it."""
    port, controller = _free_port(), _free_port()
    env_file = tmp_path / "env"
    lines = (ROOT / ".env").read_text().splitlines()
    replaced = {"KAFKA_PORT": port, "KAFKA_CONTROLLER_PORT": controller}
    env_file.write_text(
        "\n".join(
            f"{line.split('=', 1)[0]}={replaced[line.split('=', 1)[0]]}"
            if line.split("=", 1)[0] in replaced
            else line
            for line in lines
        )
        + "\n"
    )
    env = {
        **os.environ,
        "DRIFTLINE_ENV_FILE": str(env_file),
        "DRIFTLINE_RUN_DIR": str(tmp_path / "run"),
        "DRIFTLINE_CACHE_DIR": os.environ.get("DRIFTLINE_CACHE_DIR", str(ROOT / ".cache")),
        "KAFKA_HEAP_OPTS": "-Xms128m -Xmx256m",
        # The tests' environment holds the shared stack's ports, which win over the file's.
        **{name: str(value) for name, value in replaced.items()},
    }
    stack = ["bash", str(ROOT / "deploy/local/stack.sh")]
    try:  # `down` also when `up` times out: the broker runs detached from it
        started = subprocess.run(
            [*stack, "up", "kafka"], env=env, capture_output=True, text=True, timeout=180
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*stack, "down", "kafka"], env=env, capture_output=True, timeout=120, check=False)


def test_group_offsets_are_read_and_moved_on_a_cluster_that_never_had_a_group(new_cluster):
    ran = subprocess.run(
        [sys.executable, "-c", CALLS, new_cluster], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    # A group that never committed is left alone, and all of each partition is still to be read.
    assert ran.stdout.splitlines() == ["skipped 0", "lag [(('t', 0), 5), (('t', 1), 0)]"]
