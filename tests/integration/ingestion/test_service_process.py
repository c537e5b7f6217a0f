"""The service as it is deployed: ``python -m driftline.services.ingestion`` in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from driftline.kit.testing import consume, free_port
from driftline.simulator import SimulatorConfig, TransactionSimulator

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("driftline_ingestion_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_the_service_process_ingests_serves_metrics_and_stops_on_sigterm(env: Any) -> None:
    config = SimulatorConfig(seed=3, start=datetime.now(UTC) - timedelta(hours=1))
    producer = env.producer()
    for ev in TransactionSimulator(config).events(50):
        producer.send(env.raw, json.dumps(ev.event).encode(), key=ev.card_id)
    producer.send(env.raw, b"{broken", key="x")
    producer.close()

    port = free_port()
    environment = {
        **os.environ,
        "DRIFTLINE_INGESTION_TOPIC_PREFIX": env.prefix,
        "DRIFTLINE_INGESTION_GROUP_ID": env.settings.group_id,
        "DRIFTLINE_INGESTION_DEDUP_KEY_PREFIX": env.settings.dedup_key_prefix,
        "DRIFTLINE_INGESTION_METRICS_PORT": str(port),
        "DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS": env.kafka.bootstrap_servers,
        "DRIFTLINE_REDIS_URL": env.settings.redis.url,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.services.ingestion"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        samples: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and samples.get("driftline_ingestion_consumed_total", 0) < 51:
            time.sleep(0.2)
            try:
                samples = scrape(port)
            except OSError:
                continue
        assert samples["driftline_ingestion_consumed_total"] == 51
        assert samples["driftline_ingestion_clean_total"] == 50
        assert samples['driftline_ingestion_dead_lettered_total{reason="malformed_json"}'] == 1
        assert samples["driftline_ingestion_duplicates_total"] == 0
        assert samples['driftline_ingestion_field_null_ratio{field="amount"}'] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert "consumer_stopped" in stderr
    assert len(consume(env.kafka, env.clean.name, expected=50)) == 50
