"""A worker killed (SIGKILL) mid-stream and restarted ends with exactly the Redis state of an
uninterrupted run over the same events: replays never double-count or move values backwards."""

from __future__ import annotations

import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.events import transaction_event
from driftline.featurestore.online import OnlineStore
from driftline.kit.testing import consume

pytestmark = pytest.mark.integration

FS = TRANSACTION_FEATURES
COUNT = 2000


def duplicates_seen(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "driftline_features_events_total"
                and sample.labels.get("outcome") == "duplicate"
            ):
                return sample.value
    return 0.0


def dump(client: redis.Redis, key_prefix: str) -> dict[str, object]:
    """Every key under the prefix with its content (prefix stripped; expiry ignored)."""
    state: dict[str, object] = {}
    for raw in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        key = raw.decode()
        kind = client.type(key).decode()
        if kind == "hash":
            value: object = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = client.get(key)
        state[key.removeprefix(key_prefix)] = value
    return state


def test_killed_and_restarted_worker_ends_with_the_uninterrupted_state(
    namespace_factory, harness, kafka_settings, redis_settings, tmp_path
):
    # Late events (within the allowed lateness) and replayed duplicates are part of the stream.
    messages = harness.transactions(COUNT, cards=40, seed=5, late_every=37, spacing_s=0.05)
    messages += messages[100:150]  # duplicates, as an upstream replay would produce
    accepted = {m.event_id for m in messages}
    newest: dict[str, float] = {}
    for m in messages:
        e = transaction_event(m)
        newest[e.entity_id] = max(newest.get(e.entity_id, 0.0), e.event_time)
    client = redis.Redis.from_url(redis_settings.url)
    settings = {"batch_max": "20", "offline_enabled": "false"}

    def done(key_prefix: str) -> bool:
        store = OnlineStore(client, FS, key_prefix=key_prefix)
        return all(e.event_time == newest[e.entity_id] for e in store.read(sorted(newest)))

    # Uninterrupted run.
    calm = namespace_factory()
    harness.produce(kafka_settings, calm.source, messages)
    proc = harness.start_service(calm, tmp_path / "calm.log", **settings)
    harness.wait_for(lambda: done(calm.key_prefix), 120, "the uninterrupted run")
    assert harness.stop(proc) == 0

    # Killed as soon as it has written anything, then restarted. The stream's second half is
    # produced only after the kill, so the killed worker can never reach the replayed duplicates
    # at its end: the restarted one sees all of them, and any surplus is its own replay.
    crashy = namespace_factory()
    half = COUNT // 2
    harness.produce(kafka_settings, crashy.source, messages[:half])
    proc = harness.start_service(crashy, tmp_path / "crashy.log", **settings)
    pattern = f"{crashy.key_prefix}:*"
    harness.wait_for(
        lambda: next(iter(client.scan_iter(match=pattern, count=1000)), None) is not None,
        90,
        "the first write",
        interval_s=0.01,
    )
    proc.kill()
    proc.wait(10)
    harness.produce(kafka_settings, crashy.source, messages[half:])
    port = harness.free_port()
    proc = harness.start_service(crashy, tmp_path / "crashy.log", metrics_port=port, **settings)
    harness.wait_for(lambda: done(crashy.key_prefix), 120, "the restarted run")
    # The duplicates at the stream's end change no event time, so the store can look done before
    # the worker has read them: wait until it has counted them all.
    in_stream = len(messages) - len(accepted)
    harness.wait_for(lambda: duplicates_seen(port) >= in_stream, 60, "the stream's duplicates")
    replayed = duplicates_seen(port) - in_stream
    assert harness.stop(proc) == 0

    calm_state = dump(client, calm.key_prefix)
    crashy_state = dump(client, crashy.key_prefix)
    assert len(calm_state) == 40 * 3  # features hash, event buffer, profile per card
    assert crashy_state == calm_state
    # The restarted worker really re-read events the killed one had already applied.
    assert replayed > 0
    # Every event's vector was published (some twice: downstream dedups by event id).
    vectors = consume(kafka_settings, crashy.vectors.name, expected=len(messages), timeout_s=60)
    assert len(vectors) >= len(messages)
    client.close()
