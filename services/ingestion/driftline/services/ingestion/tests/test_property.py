"""Property: whatever bytes arrive, each message becomes exactly one clean event, one dead-letter
record with a known reason code, or one counted duplicate; nothing raises, nothing is lost."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from driftline.events.v1 import transaction_pb2
from driftline.kit.kafka import CONTENT_TYPE, DeadLetter, Output
from driftline.kit.testing import FakeMessage
from driftline.kit.topics import TRANSACTIONS_CLEAN
from driftline.services.ingestion.consumer import IngestionHandler
from driftline.services.ingestion.contract import Contract, Reason
from driftline.services.ingestion.dedup import MemoryDeduplicator
from driftline.services.ingestion.gate import Gate
from driftline.services.ingestion.metrics import IngestionMetrics
from driftline.services.ingestion.native import compile_batch_gate
from driftline.services.ingestion.testing import valid_event

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CONTRACT = Contract.load()
REASONS = {r.value for r in Reason}
VALID: dict[str, Any] = valid_event()
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/x-protobuf", "text/plain", "", "garbage"]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
field_names = st.sampled_from([*VALID, "extra", ""])


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with some fields replaced, removed or added: near the contract's edges."""
    event = dict(VALID)
    event["event_id"] = draw(st.sampled_from(["ev-1", "ev-2", "ev-3"]))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(field_names)
        if draw(st.booleans()):
            event[name] = draw(
                json_values | st.sampled_from(["USD", " us ", "POS", "2025-06-01T12:03:00+00:00"])
            )
        else:
            event.pop(name, None)
    return json.dumps(event, allow_nan=True).encode()


@st.composite
def protobuf_events(draw: st.DrawFn) -> bytes:
    fields = {
        name: draw(st.text(max_size=20) | st.just(value)) for name, value in VALID.items() if name != "amount"
    }
    message = transaction_pb2.RawTransaction(amount=draw(st.floats()), **fields)
    data = message.SerializeToString()
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data


payloads = st.binary(max_size=300) | mutated_events() | protobuf_events() | st.just(b"")


def handler(registry: CollectorRegistry, *, native: bool) -> IngestionHandler:
    return IngestionHandler(
        Gate(CONTRACT),
        MemoryDeduplicator(ttl_s=60),
        TRANSACTIONS_CLEAN,
        IngestionMetrics(registry),
        batch_gate=compile_batch_gate(CONTRACT) if native else None,
        clock=lambda: NOW,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(payloads, CONTENT_TYPES), min_size=1, max_size=8))
def test_arbitrary_bytes_only_ever_become_a_clean_event_or_a_dead_letter(
    batch: list[tuple[bytes, str | None]],
) -> None:
    registry = CollectorRegistry()
    native = handler(registry, native=True)
    messages = [
        FakeMessage(payload, _offset=i, _headers=[(CONTENT_TYPE, ct.encode())] if ct is not None else [])
        for i, (payload, ct) in enumerate(batch)
    ]
    outcomes = native(messages)  # type: ignore[arg-type]
    assert len(outcomes) == len(messages)
    # The native fast path changes nothing but the speed: the Python gate alone decides the same.
    assert handler(CollectorRegistry(), native=False)(messages) == outcomes  # type: ignore[arg-type]
    seen_ids: set[str] = set()
    clean = dead = duplicates = 0
    for outcome in outcomes:
        if isinstance(outcome, DeadLetter):
            assert outcome.reason in REASONS
            dead += 1
        elif len(outcome) == 0:
            duplicates += 1
        else:
            assert len(outcome) == 1
            output = outcome[0]
            assert isinstance(output, Output)
            assert output.topic == TRANSACTIONS_CLEAN.name
            event = transaction_pb2.CleanTransaction.FromString(output.value)
            assert event.event_id
            assert event.card_id.encode() == output.key
            assert math.isfinite(event.amount)
            assert event.amount > 0
            assert event.event_id not in seen_ids
            seen_ids.add(event.event_id)
            clean += 1
    native.on_delivered(messages)  # type: ignore[arg-type]
    assert registry.get_sample_value("driftline_ingestion_consumed_total") == len(messages)
    assert len(messages) == clean + dead + duplicates
