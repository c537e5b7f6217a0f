"""Group offsets on a brand-new cluster, whose offsets topic does not exist yet.

confluent-kafka's ``list_consumer_group_offsets`` kills the process (SIGSEGV) there, and it did
so to ``make demo`` on every fresh machine: the demo's first step moves its consumer groups to
the end of their topics. The shared broker cannot show it (its offsets topic exists once any test
has committed), so this test starts a private broker with the stack's own script, on free
ports and in its own run directory, and runs the calls in a child process: a crash is then a
failed assertion, not a dead test run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..brokers import private_broker

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
print("skipped", skip_to_end(KafkaSettings(bootstrap_servers=servers), "demo-group"))
print("lag", sorted(GroupLag(KafkaSettings(bootstrap_servers=servers), "demo-group", ["t"]).read().items()))
"""


@pytest.fixture
def new_cluster(tmp_path: Path) -> Iterator[str]:
    """A single-node KRaft broker formatted for this test alone; stopped and deleted after it."""
    with private_broker(tmp_path) as address:
        yield address


def test_group_offsets_are_read_and_moved_on_a_cluster_that_never_had_a_group(new_cluster):
    ran = subprocess.run(
        [sys.executable, "-c", CALLS, new_cluster], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    # A group that never committed is left alone, and all of each partition is still to be read.
    assert ran.stdout.splitlines() == ["skipped 0", "lag [(('t', 0), 5), (('t', 1), 0)]"]
