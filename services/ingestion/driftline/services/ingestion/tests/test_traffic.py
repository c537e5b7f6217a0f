"""Simulated traffic with injected garbage and duplicates, and file replay."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftline.services.ingestion.contract import Contract
from driftline.services.ingestion.gate import Accepted, Gate, Rejected
from driftline.services.ingestion.produce import live_traffic
from driftline.services.ingestion.traffic import (
    CORRUPTIONS,
    Encoding,
    Kind,
    TrafficConfig,
    garbage,
    replay,
    simulated,
)
from driftline.simulator import SimulatorConfig, TransactionSimulator

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GATE = Gate(Contract.load())


def content_type(headers: list[tuple[str, bytes]]) -> bytes | None:
    return dict(headers).get("content-type")


def config(**kwargs: object) -> TrafficConfig:
    sim = SimulatorConfig(start=NOW - timedelta(hours=1))
    return TrafficConfig(simulator=sim, **kwargs)  # type: ignore[arg-type]


def test_every_corruption_is_dead_lettered_with_its_declared_reason() -> None:
    events = [
        e.event for e in TransactionSimulator(SimulatorConfig(start=NOW - timedelta(hours=1))).events(50)
    ]
    rng = random.Random(1)
    for reason, corrupt in CORRUPTIONS:
        for event in events:
            value, headers = corrupt(rng, event, NOW)
            verdict = GATE.examine(value, content_type(headers), NOW)
            assert isinstance(verdict, Rejected), (reason, value[:80])
            assert verdict.reason is reason, (verdict, value[:80])
    assert garbage(rng, events[0], NOW)[2] in {r for r, _ in CORRUPTIONS}


def test_simulated_traffic_mixes_valid_garbage_and_duplicates_as_labelled() -> None:
    messages = list(simulated(config(count=5_000, garbage_rate=0.1, duplicate_rate=0.05), now=NOW))
    kinds = Counter(m.kind for m in messages)
    assert len(messages) == 5_000
    assert kinds[Kind.GARBAGE] == pytest.approx(500, rel=0.2)
    assert kinds[Kind.DUPLICATE] == pytest.approx(250, rel=0.25)
    valid_values = set()
    for m in messages:
        verdict = GATE.examine(m.value, content_type(m.headers), NOW)
        if m.kind is Kind.GARBAGE:
            assert isinstance(verdict, Rejected)
            assert verdict.reason is m.expected_reason
            assert m.event is None
        else:
            assert isinstance(verdict, Accepted)
        if m.kind is Kind.VALID:
            assert m.event is not None
            assert m.key == m.event.card_id.encode()
            valid_values.add(m.value)
        if m.kind is Kind.DUPLICATE:
            assert m.value in valid_values  # an exact copy of an earlier valid message
            assert m.event is None


def test_simulated_traffic_is_deterministic() -> None:
    a = list(simulated(config(count=500, garbage_rate=0.2, duplicate_rate=0.1), now=NOW))
    b = list(simulated(config(count=500, garbage_rate=0.2, duplicate_rate=0.1), now=NOW))
    assert [(m.value, m.kind) for m in a] == [(m.value, m.kind) for m in b]


def test_protobuf_encoding_gives_the_same_clean_values() -> None:
    as_json = [m for m in simulated(config(count=50), now=NOW)]
    as_proto = [m for m in simulated(config(count=50, encoding=Encoding.PROTOBUF), now=NOW)]
    for j, p in zip(as_json, as_proto, strict=True):
        assert content_type(p.headers) == b"application/x-protobuf"
        assert GATE.examine(j.value, content_type(j.headers), NOW) == GATE.examine(
            p.value, content_type(p.headers), NOW
        )


def test_rates_must_leave_room_for_valid_events() -> None:
    with pytest.raises(ValueError):
        TrafficConfig(garbage_rate=0.6, duplicate_rate=0.4)
    with pytest.raises(ValueError):
        TrafficConfig(garbage_rate=-0.1)


def test_a_jsonl_file_is_replayed_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"card_id": " c-1 ", "amount": 1}\n\nnot json\r\n[1]\n')
    messages = list(replay(path))
    assert [m.value for m in messages] == [b'{"card_id": " c-1 ", "amount": 1}', b"not json", b"[1]"]
    assert [m.key for m in messages] == [b"c-1", None, None]
    assert {m.kind for m in messages} == {Kind.REPLAY}


def test_a_csv_file_becomes_json_events(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("event_id,card_id,amount,channel\nev-1,c-1,12.5,pos\nev-2,c-2,lots,\n")
    messages = list(replay(path))
    assert [json.loads(m.value) for m in messages] == [
        {"event_id": "ev-1", "card_id": "c-1", "amount": 12.5, "channel": "pos"},
        {"event_id": "ev-2", "card_id": "c-2", "amount": "lots"},
    ]
    assert [m.key for m in messages] == [b"c-1", b"c-2"]


def test_paced_live_traffic_starts_now_and_keeps_pace_with_the_wall_clock() -> None:
    cfg = live_traffic(seed=3, count=1000, rate=100, now=NOW)
    assert cfg.simulator.start == NOW
    assert cfg.simulator.mean_gap_s == pytest.approx(0.01)
    assert cfg.simulator.n_cards == 2500


def test_unpaced_live_traffic_ends_now() -> None:
    cfg = live_traffic(seed=3, count=1000, rate=None, now=NOW)
    events = list(TransactionSimulator(cfg.simulator).events(1000))
    assert events[-1].event_time <= NOW + timedelta(seconds=5)
    assert events[0].event_time >= NOW - timedelta(seconds=60)
