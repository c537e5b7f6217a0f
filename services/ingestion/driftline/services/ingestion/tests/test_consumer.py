"""The batch handler: outcomes per message and the accounting identity."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE, PROTOBUF, DeadLetter, Output
from driftline.kit.testing import FakeMessage
from driftline.kit.topics import TRANSACTIONS_CLEAN
from driftline.services.ingestion.consumer import IngestionHandler
from driftline.services.ingestion.contract import Contract
from driftline.services.ingestion.dedup import Claim, MemoryDeduplicator, claim
from driftline.services.ingestion.gate import Gate
from driftline.services.ingestion.metrics import IngestionMetrics
from driftline.services.ingestion.native import compile_batch_gate
from driftline.services.ingestion.quality import QualityWindow

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CLEAN_TOPIC = TRANSACTIONS_CLEAN.namespaced("unit.")


def event(event_id: str, **changes: Any) -> bytes:
    base = {
        "event_id": event_id,
        "card_id": " card-7 ",
        "merchant_id": "m-1",
        "amount": 10.0,
        "currency": "eur",
        "merchant_category": "travel",
        "country": "fr",
        "channel": "online",
        "event_time": "2025-06-01T11:00:00Z",
        "contract_version": "1",
    }
    base.update(changes)
    return json.dumps(base).encode()


class Harness:
    def __init__(self, *, native: bool) -> None:
        self.registry = CollectorRegistry()
        contract = Contract.load()
        self.quality = QualityWindow(contract.field_names, window=1000)
        self.dedup = MemoryDeduplicator(ttl_s=3600)
        self.handler = IngestionHandler(
            Gate(contract, self.quality),
            self.dedup,
            CLEAN_TOPIC,
            IngestionMetrics(self.registry),
            batch_gate=compile_batch_gate(contract) if native else None,
            clock=lambda: NOW,
        )

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def messages(values: Sequence[bytes], start: int = 0, partition: int = 0) -> list[FakeMessage]:
    return [
        FakeMessage(v, _topic="raw", _partition=partition, _offset=start + i) for i, v in enumerate(values)
    ]


@pytest.fixture(params=[True, False], ids=["native", "python"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """Every test runs with the native fast path and without it: the outcomes must not differ."""
    return Harness(native=request.param)


def test_a_valid_event_becomes_a_clean_event_keyed_by_card(harness: Harness) -> None:
    [outcome] = harness.handler(messages([event("ev-1")]))  # type: ignore[arg-type]
    assert isinstance(outcome, list)
    [output] = outcome
    assert isinstance(output, Output)
    assert output.topic == CLEAN_TOPIC.name
    assert output.key == b"card-7"
    assert (CONTENT_TYPE, PROTOBUF.encode()) in output.headers
    clean = transaction_pb2.CleanTransaction.FromString(output.value)
    assert (clean.event_id, clean.currency, clean.country) == ("ev-1", "EUR", "FR")
    assert (clean.source_topic, clean.source_partition, clean.source_offset) == ("raw", 0, 0)


def test_bad_input_becomes_a_dead_letter_with_its_reason(harness: Harness) -> None:
    outcomes = harness.handler(messages([b"{oops", event("ev-2", amount=float("nan"))]))  # type: ignore[arg-type]
    assert [o.reason for o in outcomes if isinstance(o, DeadLetter)] == ["malformed_json", "not_finite"]
    assert all(isinstance(o, DeadLetter) and o.detail for o in outcomes)


def test_a_protobuf_message_is_decoded_by_its_content_type(harness: Harness) -> None:
    raw = transaction_pb2.RawTransaction(**json.loads(event("ev-p")))
    message = FakeMessage(raw.SerializeToString(), _topic="raw", _headers=[(CONTENT_TYPE, PROTOBUF.encode())])
    [outcome] = harness.handler([message])  # type: ignore[list-item]
    assert isinstance(outcome, list)
    assert len(outcome) == 1


def test_duplicates_produce_nothing_and_every_message_is_booked_once(harness: Harness) -> None:
    batch = messages([event("ev-1"), event("ev-2"), b"garbage", event("ev-1"), event("ev-3", channel="x")])
    outcomes = harness.handler(batch)  # type: ignore[arg-type]
    assert [len(o) if isinstance(o, list) else o.reason for o in outcomes] == [
        1,
        1,
        "malformed_json",
        0,
        "not_in_enum",
    ]
    later = messages([event("ev-2")], start=100)
    assert harness.handler(later) == [[]]  # type: ignore[arg-type]
    # Nothing is booked before delivery.
    assert harness.value("driftline_ingestion_consumed_total") == 0
    harness.handler.on_delivered(batch)  # type: ignore[arg-type]
    harness.handler.on_delivered(later)  # type: ignore[arg-type]
    consumed = harness.value("driftline_ingestion_consumed_total")
    clean = harness.value("driftline_ingestion_clean_total")
    duplicates = harness.value("driftline_ingestion_duplicates_total")
    dead = harness.value("driftline_ingestion_dead_lettered_total", reason="malformed_json") + harness.value(
        "driftline_ingestion_dead_lettered_total", reason="not_in_enum"
    )
    assert (consumed, clean, duplicates, dead) == (6, 2, 2, 2)


def test_a_replayed_batch_is_clean_again_not_a_duplicate_of_itself(harness: Harness) -> None:
    batch = messages([event("ev-1"), event("ev-2")], start=10)
    first = harness.handler(batch)  # type: ignore[arg-type]
    # The process died before the commit; the same messages come back from the same offsets.
    replay = harness.handler(messages([event("ev-1"), event("ev-2")], start=10))  # type: ignore[arg-type]
    assert [len(o) for o in first] == [len(o) for o in replay] == [1, 1]  # type: ignore[arg-type]


def test_a_copy_claimed_from_elsewhere_before_the_batch_is_a_duplicate(harness: Harness) -> None:
    claim(harness.dedup, [Claim("ev-1", "raw/2/5")])
    assert harness.handler(messages([event("ev-1")])) == [[]]  # type: ignore[arg-type]


def test_a_retried_batch_is_booked_once(harness: Harness) -> None:
    batch = messages([event("ev-1"), b"x"])
    harness.handler(batch)  # type: ignore[arg-type]
    harness.handler(batch)  # type: ignore[arg-type]
    harness.handler.on_delivered(batch)  # type: ignore[arg-type]
    assert harness.value("driftline_ingestion_consumed_total") == 2
    assert harness.value("driftline_ingestion_clean_total") == 1


def test_a_message_the_loop_dead_lettered_itself_is_booked_as_handler_error(harness: Harness) -> None:
    batch = messages([event("ev-1")])
    harness.handler.on_delivered(batch)  # type: ignore[arg-type]
    assert harness.value("driftline_ingestion_dead_lettered_total", reason="handler_error") == 1
    assert harness.value("driftline_ingestion_consumed_total") == 1


@pytest.mark.parametrize("when", ["sending", "reading"])
def test_a_deduplicator_failure_propagates_so_the_loop_retries(when: str) -> None:
    class Down:
        def __init__(self) -> None:
            self.closed = False

        def send(self, event_ids: Sequence[str], sources: Sequence[str]) -> None:
            if when == "sending":
                raise ConnectionError("redis is down")

        def verdicts(self) -> list[bool]:
            raise ConnectionError("redis went away")

        def close(self) -> None:
            self.closed = True

        def __enter__(self) -> Down:
            return self

        def __exit__(self, *exc_info: object) -> None:
            self.close()

    down = Down()

    class Dedup:
        def claims(self) -> Down:
            return down

    metrics = IngestionMetrics(CollectorRegistry())
    handler = IngestionHandler(Gate(Contract.load()), Dedup(), CLEAN_TOPIC, metrics, clock=lambda: NOW)
    with pytest.raises(ConnectionError):
        handler(messages([event("ev-1")]))  # type: ignore[arg-type]
    assert down.closed


def test_claims_are_decided_in_order_across_the_parts_of_a_big_batch(harness: Harness) -> None:
    # More messages than one claim part, with a copy of the first event in the last part.
    batch = [event(f"ev-{i}") for i in range(600)] + [event("ev-0")]
    outcomes = harness.handler(messages(batch))  # type: ignore[arg-type]
    assert all(len(o) == 1 for o in outcomes[:600])
    assert outcomes[600] == []  # the later copy is the duplicate


def test_quality_gauges_follow_the_batch(harness: Harness) -> None:
    harness.handler(messages([event("ev-1", amount=None), event("ev-2"), event("ev-3", amount=-2)]))  # type: ignore[arg-type]
    assert harness.value("driftline_ingestion_field_null_ratio", field="amount") == pytest.approx(1 / 3)
    assert harness.value("driftline_ingestion_field_out_of_range_ratio", field="amount") == pytest.approx(
        1 / 3
    )
    assert harness.value("driftline_ingestion_field_null_ratio", field="card_id") == 0
    assert harness.value("driftline_ingestion_quality_window_events") == 3


def test_a_prepared_batch_is_claimed_when_prepared_and_handled_like_a_fresh_one(harness: Harness) -> None:
    batch = messages([event("ev-1"), b"{not json", event("ev-2")])
    harness.handler.prepare(batch)  # type: ignore[arg-type]
    # Its claims are made: a copy claimed from elsewhere now is the duplicate.
    assert claim(harness.dedup, [Claim("ev-1", "other/0/9")]) == [False]

    outcomes = harness.handler(batch)  # type: ignore[arg-type]
    assert [type(o).__name__ for o in outcomes] == ["list", "DeadLetter", "list"]
    assert [len(o) for o in (outcomes[0], outcomes[2])] == [1, 1]
    harness.handler.on_delivered(batch)  # type: ignore[arg-type]
    assert harness.value("driftline_ingestion_clean_total") == 2


def test_a_prepared_batch_handled_afresh_counts_once_in_the_quality_window(harness: Harness) -> None:
    batch = messages([event("ev-1", amount=None), event("ev-2"), b"{not json"])
    harness.handler.prepare(batch)  # type: ignore[arg-type]
    assert harness.quality.events == 0  # nothing counts before the batch's outcomes are made
    # The loop handles a part of it instead (a split or a retry): the prepared work is dropped...
    harness.handler(batch[:1])  # type: ignore[arg-type]
    # ... and the whole batch is handled afresh, later.
    harness.handler(batch)  # type: ignore[arg-type]
    # ev-1 twice (handled alone, then with its batch), ev-2 once; the malformed message never
    # reaches the field rules.
    assert harness.quality.events == 3
    assert harness.value("driftline_ingestion_field_null_ratio", field="amount") == pytest.approx(2 / 3)
    assert harness.value("driftline_ingestion_quality_window_events") == 3


class _Recorded:
    """Claims that record what happens to them, deciding like a fresh ``MemoryDeduplicator``."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name
        self.inner = MemoryDeduplicator(ttl_s=3600).claims()

    def send(self, event_ids: Sequence[bytes], sources: Sequence[bytes]) -> None:
        self.log.append(f"{self.name} send")
        self.inner.send(event_ids, sources)

    def verdicts(self) -> list[bool]:
        self.log.append(f"{self.name} verdicts")
        return self.inner.verdicts()

    def close(self) -> None:
        self.log.append(f"{self.name} closed")

    def __enter__(self) -> _Recorded:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def test_handling_a_batch_other_than_the_prepared_one_releases_the_prepared_claims() -> None:
    log: list[str] = []
    made = iter("ABC")

    class Dedup:
        def claims(self) -> _Recorded:
            return _Recorded(log, next(made))

    metrics = IngestionMetrics(CollectorRegistry())
    handler = IngestionHandler(Gate(Contract.load()), Dedup(), CLEAN_TOPIC, metrics, clock=lambda: NOW)
    handler.prepare(messages([event("ev-1"), event("ev-2")]))  # type: ignore[arg-type]
    # The loop split the batch up (or retries it): a part is not the prepared batch.
    outcomes = handler(messages([event("ev-1")]))  # type: ignore[arg-type]
    assert [len(o) for o in outcomes] == [1]  # one clean event
    assert log == ["A send", "A closed", "B send", "B verdicts", "B closed"]
