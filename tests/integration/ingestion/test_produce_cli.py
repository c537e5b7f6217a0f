"""``driftline produce`` against the real broker, through the ``driftline`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from driftline.events.v1 import transaction_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.kit.testing import consume
from driftline.services.cli.main import cli

pytestmark = pytest.mark.integration


def test_produce_publishes_simulated_events_garbage_and_labels(env: Any) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "produce",
            "--count", "400",
            "--rate", "0",
            "--seed", "11",
            "--garbage-rate", "0.1",
            "--duplicate-rate", "0.05",
            "--label-delay-s", "0.5",
            "--topic-prefix", env.prefix,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = consume(env.kafka, env.raw.name, expected=400)
    assert len(raw) == 400
    with env.ingestion() as running:
        running.wait_consumed(400)
        clean = int(running.value("driftline_ingestion_clean_total"))
        assert running.value("driftline_ingestion_duplicates_total") > 0
        assert sum(running.dead_lettered().values()) > 0
    clean_ids = {
        transaction_pb2.CleanTransaction.FromString(m.value()).event_id
        for m in consume(env.kafka, env.clean.name, expected=clean)
    }
    assert len(clean_ids) == clean
    labels = consume(env.kafka, env.feedback.name, expected=clean)
    parsed = [feedback_pb2.FeedbackLabel.FromString(m.value()) for m in labels]
    # Exactly one label per valid event: none for garbage, none for the duplicates.
    assert sorted(p.event_id for p in parsed) == sorted(clean_ids)
    assert all(m.key() == p.entity_id.encode() for m, p in zip(labels, parsed, strict=True))
    assert {p.label for p in parsed} <= {0, 1}


def test_produce_replays_a_jsonl_file_byte_for_byte(env: Any, tmp_path: Path) -> None:
    lines = [b'{"event_id": "a"}', b"not json", b'{"card_id": "c-9"}']
    path = tmp_path / "replay.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(
        cli, ["produce", "--file", str(path), "--rate", "0", "--topic-prefix", env.prefix]
    )
    assert result.exit_code == 0, result.output
    raw = consume(env.kafka, env.raw.name, expected=3)
    assert sorted(m.value() for m in raw) == sorted(lines)
    assert {m.key() for m in raw} == {None, b"c-9"}
