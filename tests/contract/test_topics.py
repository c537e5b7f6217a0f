"""Code, topic declarations and docs agree on every Kafka topic."""

from __future__ import annotations

import re
from pathlib import Path

from driftline.kit.topics import ALL_TOPICS, DAY_MS

ROOT = Path(__file__).resolve().parents[2]


def _doc_rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_docs_list_exactly_the_declared_topics():
    assert set(_doc_rows()) == {t.name for t in ALL_TOPICS}


def test_docs_agree_with_declarations_on_value_partitions_retention_and_dead_letters():
    rows = _doc_rows()
    for topic in ALL_TOPICS:
        _, key, value, partitions, retention, dead = rows[topic.name]
        assert int(partitions) == topic.partitions, topic.name
        assert retention == f"{topic.retention_ms // DAY_MS}d", topic.name
        assert dead.strip("`") == (topic.dead_letter.name if topic.dead_letter else ""), topic.name
        if topic.message is not None:
            assert value == f"`{topic.message.DESCRIPTOR.full_name}`", topic.name
        assert key.split(" ")[0].strip("`,") in topic.key or key == "source key", topic.name


def test_no_code_types_a_topic_name_outside_the_declarations():
    names = [t.name for t in ALL_TOPICS]
    pattern = re.compile("|".join(re.escape(f'"{n}"') + "|" + re.escape(f"'{n}'") for n in names))
    offenders = []
    for base in ("libs", "services", "bench"):
        for path in (ROOT / base).rglob("*.py"):
            if "proto" in path.parts and base == "libs" and path.parts[-2] != "kit":
                continue
            if path.name == "topics.py" and path.parent.name == "kit":
                continue
            if "tests" in path.parts:
                continue
            if pattern.search(path.read_text(errors="replace")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_topic_value_type_is_one_protobuf_message_or_raw_bytes():
    for topic in ALL_TOPICS:
        if topic.message is None:
            assert topic.dead_letter is not None or "dlq" in topic.name or topic.name == "transactions.raw.v1"
