"""The transactional outbox against the real broker: events written while Kafka is unreachable
stay pending, and once it is reachable every one arrives exactly once, in order. Also the
service as a real process (``python -m driftline.services.registry``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftline.kit.kafka import DeliveryError, KafkaProducer
from driftline.kit.registry_client import RegistryClient
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import consume, free_port, written
from driftline.registry.v1 import registry_pb2 as pb
from driftline.services.registry import testing

from .conftest import ROOT, TOKEN

pytestmark = pytest.mark.integration


class Switch:
    """A publisher that sends through whichever producer is current: first one whose broker
    is unreachable (a dead port), then the real broker."""

    def __init__(self, current: KafkaProducer) -> None:
        self.current = current

    def send(self, topic, value, key=None, headers=None):
        return self.current.send(topic, value, key, headers)


async def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


#: The event types the eight changes of ``_changes`` announce, in order.
_CHANGES = [
    pb.MODEL_EVENT_TYPE_VERSION_REGISTERED,
    pb.MODEL_EVENT_TYPE_VERSION_REGISTERED,
    pb.MODEL_EVENT_TYPE_ALIAS_SET,
    pb.MODEL_EVENT_TYPE_LOCKED,
    pb.MODEL_EVENT_TYPE_ALIAS_SET,
    pb.MODEL_EVENT_TYPE_UNLOCKED,
    pb.MODEL_EVENT_TYPE_RUN_RECORDED,
    pb.MODEL_EVENT_TYPE_ALIAS_DELETED,
]


async def _changes(client: RegistryClient) -> list[int]:
    """Eight changes; returns the event types they announce, in order."""
    await client.register(testing.register_request())
    await client.register(testing.register_request())
    await client.set_alias("fraud", "champion", 1, 0, "initial")
    await client.lock("fraud", "release-1")
    await client.set_alias("fraud", "champion", 2, 1, "better", lock_owner="release-1")
    await client.unlock("fraud", "release-1")
    await client.record_run(pb.Run(run_id="run-1", model_name="fraud", metrics={"auc": 0.9}))
    await client.delete_alias("fraud", "champion", 2, "rollback")
    return list(_CHANGES)


async def test_outbox_drains_after_a_broker_outage_exactly_once_in_order(
    start_registry, events_topic, kafka_settings
):
    dead = KafkaProducer(
        KafkaSettings(bootstrap_servers="127.0.0.1:1", delivery_timeout_ms=1500, client_id="dead-broker")
    )
    real = KafkaProducer(kafka_settings)
    switch = Switch(dead)
    app, address = await start_registry(publisher=switch, outbox_poll_interval_s=0.2)
    try:
        async with RegistryClient(address, TOKEN) as client:
            # Writes succeed while Kafka is down: the events wait in the outbox.
            expected_types = await _changes(client)
        n = len(expected_types)
        assert app.outbox.pending_count() == n

        # The relay tried, failed and tried again; nothing was marked sent, nothing arrived.
        await _until(
            lambda: all(p.attempts >= 2 for p in app.outbox.pending(100)),
            timeout_s=60,
            what="two failed publishing attempts",
        )
        assert app.outbox.pending_count() == n
        assert written(kafka_settings, events_topic) == 0

        # The broker "returns".
        switch.current = real
        await _until(lambda: app.outbox.pending_count() == 0, timeout_s=60, what="the outbox to drain")

        assert written(kafka_settings, events_topic) == n
        messages = consume(kafka_settings, events_topic.name, expected=n, timeout_s=30)
        events = [pb.ModelEvent.FromString(m.value()) for m in messages]
        assert [e.audit_seq for e in events] == list(range(1, n + 1))
        assert [e.type for e in events] == expected_types
        assert len({e.event_id for e in events}) == n
        assert {m.key() for m in messages} == {b"fraud"}
        assert events[4].alias == "champion"
        assert (events[4].previous_version, events[4].version) == (1, 2)
    finally:
        await app.stop()
        real.close(10)
        with contextlib.suppress(DeliveryError):
            dead.close(0.1)


async def test_the_service_process_serves_publishes_and_drains_on_sigterm(
    tmp_path, backend, events_topic, kafka_settings
):
    port, metrics_port = free_port(), free_port()
    prefix = events_topic.name.removesuffix("registry.model-events.v1")
    env = {
        **os.environ,
        "DRIFTLINE_REGISTRY_PORT": str(port),
        "DRIFTLINE_REGISTRY_METRICS_PORT": str(metrics_port),
        "DRIFTLINE_REGISTRY_DATA_DIR": str(tmp_path),
        "DRIFTLINE_REGISTRY_TOKEN": TOKEN,
        "DRIFTLINE_REGISTRY_DATABASE_URL": backend["database_url"],
        "DRIFTLINE_REGISTRY_EVENTS_TOPIC_PREFIX": prefix,
        "DRIFTLINE_REGISTRY_OUTBOX_POLL_INTERVAL_S": "0.2",
        "DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
    }
    if "database_schema" in backend:
        env["DRIFTLINE_REGISTRY_DATABASE_SCHEMA"] = backend["database_schema"]
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.services.registry"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "registry did not become SERVING"
                await asyncio.sleep(0.2)

        async with RegistryClient(address, TOKEN) as client:
            registered = await client.register(testing.register_request())
            await client.set_alias("fraud", "champion", registered.version, 0, "ship")
            assert await client.fetch_artifact("fraud", 1) == testing.tiny_model()

        messages = consume(kafka_settings, events_topic.name, expected=2, timeout_s=30)
        types = [pb.ModelEvent.FromString(m.value()).type for m in messages]
        assert types == [pb.MODEL_EVENT_TYPE_VERSION_REGISTERED, pb.MODEL_EVENT_TYPE_ALIAS_SET]

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "driftline_registry_versions_registered_total 1.0" in metrics
        assert "driftline_registry_outbox_pending 0.0" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0


async def _outage(app, address: str, stack) -> None:
    """One change with the broker up, eight while it is down (they wait in the outbox), then
    the broker comes back and the outbox drains."""
    async with RegistryClient(address, TOKEN) as client:
        await client.record_run(pb.Run(run_id="before", model_name="fraud"))
        await _until(lambda: app.outbox.pending_count() == 0, timeout_s=60, what="the first event to go out")
        stopped = await asyncio.to_thread(stack, "down", "kafka")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        try:
            # Writes succeed while the broker is down: the events wait in the outbox.
            assert await _changes(client) == _CHANGES
            n = len(_CHANGES)
            await _until(
                lambda: any(p.attempts >= 1 for p in app.outbox.pending(100)),
                timeout_s=120,
                what="a failed publishing attempt",
            )
            assert app.outbox.pending_count() == n
        finally:
            started = await asyncio.to_thread(stack, "up", "kafka")
            assert started.returncode == 0, started.stdout + started.stderr
        await _until(lambda: app.outbox.pending_count() == 0, timeout_s=180, what="the outbox to drain")


@pytest.mark.disruptive
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_outbox_drains_after_the_real_broker_stops_and_starts(
    start_registry, events_topic, kafka_settings, stack
):
    """A producer connected to the real broker, through a real outage. Its delivery timeout is
    short, so the relay sees its sends fail and tries again while the broker is down."""
    producer = KafkaProducer(kafka_settings.copy(update={"delivery_timeout_ms": 3000}))
    app, address = await start_registry(publisher=producer, outbox_poll_interval_s=0.2)
    try:
        await _outage(app, address, stack)
    finally:
        await app.stop()
        with contextlib.suppress(DeliveryError):
            producer.close(10)
    n = len(_CHANGES)
    # At-least-once: a send the relay saw fail may still have landed, and then goes out again;
    # consumers de-duplicate by event id. Each event's first copy comes in commit order.
    total = written(kafka_settings, events_topic)
    messages = consume(kafka_settings, events_topic.name, expected=total, timeout_s=60)
    assert len(messages) == total >= n + 1
    first: dict[str, pb.ModelEvent] = {}
    for message in messages:
        event = pb.ModelEvent.FromString(message.value())
        first.setdefault(event.event_id, event)
    events = list(first.values())
    assert [e.audit_seq for e in events] == list(range(1, n + 2))
    assert [e.type for e in events[1:]] == _CHANGES
