"""The compiled fast paths accept only what the contract engine accepts, with the same values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.services.ingestion.contract import DEFAULT_CONTRACT_PATH, Contract
from driftline.services.ingestion.fastpath import compile_fast_path, compile_json_fast_path
from driftline.services.ingestion.gate import Gate, Rejected
from driftline.services.ingestion.testing import valid_event
from driftline.simulator import SimulatorConfig, TransactionSimulator

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CONTRACT = Contract.load()
FAST = compile_fast_path(CONTRACT)
VALID: dict[str, Any] = valid_event(event_time="2025-06-01T11:00:00.250000Z")
# Values near every rule's edge, canonical or not.
EDGE_VALUES = st.sampled_from(
    [
        None, True, 0, 1, -1, 0.0, 1e6, 1e6 + 0.01, 10**400, float("nan"), float("inf"), "", " ", "x" * 64,
        "x" * 65, "EUR", "eur", " EUR", "US", "us", "USA", "pos", "POS", "online", "travel", "Travel", "1",
        "2", " 1", "ev 1", "évent", "\ud800", "2025-06-01T11:00:00Z", "2025-06-01t11:00:00z",
        " 2025-06-01T11:00:00Z", "2025-06-01T11:00:00", "2025-06-01T13:00:00+02:00", "2025-02-30T00:00:00Z",
        "2025-06-01T12:04:59Z", "2025-06-01T12:05:01Z", "2025-05-25T12:00:01Z", "2025-05-25T11:59:59Z",
        "0001-01-01T00:00:00+01:00", [], {},
    ]
)  # fmt: skip
EDITS = st.lists(st.tuples(st.sampled_from([*VALID, "extra"]), st.one_of(EDGE_VALUES, st.just(KeyError))))


def edited(edits: list[tuple[str, Any]]) -> dict[str, Any]:
    event = dict(VALID)
    for name, value in edits:
        if value is KeyError:
            event.pop(name, None)
        else:
            event[name] = value
    return event


@settings(max_examples=500, deadline=None)
@given(EDITS)
def test_the_fast_path_never_accepts_what_the_engine_rejects(edits: list[tuple[str, Any]]) -> None:
    event = edited(edits)
    fast = FAST(event, NOW)
    if fast is not None:
        result = CONTRACT.validate(event, NOW)
        assert result.ok, result.violations
        assert fast == result.values


def test_canonical_events_take_the_fast_path() -> None:
    start = NOW - timedelta(hours=1)
    for ev in TransactionSimulator(SimulatorConfig(start=start)).events(2_000):
        fast = FAST(ev.event, NOW)
        assert fast is not None
        assert fast == CONTRACT.validate(ev.event, NOW).values


@pytest.mark.parametrize(
    "edit",
    [
        {"currency": "eur"},
        {"event_id": " ev-1 "},
        {"amount": 10},
        {"event_time": "2025-06-01T13:00:00+02:00"},
    ],
)
def test_valid_but_unnormalised_events_leave_the_fast_path_to_the_engine(edit: dict[str, Any]) -> None:
    event = {**VALID, **edit}
    result = CONTRACT.validate(event, NOW)
    assert result.ok
    fast = FAST(event, NOW)
    assert fast is None or fast == result.values


def test_a_drop_contract_fast_path_ignores_extra_fields() -> None:
    document = yaml.safe_load(DEFAULT_CONTRACT_PATH.read_text())
    document["unknown_fields"] = "drop"
    contract = Contract.from_mapping(document)
    fast = compile_fast_path(contract)({**VALID, "extra": 1}, NOW)
    assert fast == contract.validate({**VALID, "extra": 1}, NOW).values
    assert compile_fast_path(CONTRACT)({**VALID, "extra": 1}, NOW) is None


# The JSON fast path: bytes in, and the reference is the general path (decode with duplicate-key
# detection, then the engine).
FAST_JSON = compile_json_fast_path(CONTRACT)
GATE = Gate(CONTRACT)


def reference(payload: bytes) -> dict[str, Any] | None:
    decoded = GATE._decode_json(payload)
    if isinstance(decoded, Rejected):
        return None
    result = CONTRACT.validate(decoded, NOW)
    return result.values if result.ok else None


def assert_agrees(payload: bytes) -> None:
    fast = FAST_JSON(payload, NOW)
    if fast is not None:
        assert fast == reference(payload), payload


SERIALISERS = st.sampled_from(
    [
        lambda e: json.dumps(e, separators=(",", ":")),
        lambda e: json.dumps(e),
        lambda e: json.dumps(e, indent=2, sort_keys=True),
        lambda e: json.dumps(e, ensure_ascii=False),
    ]
)


@settings(max_examples=500, deadline=None)
@given(EDITS, SERIALISERS)
def test_the_json_fast_path_never_accepts_what_the_general_path_rejects(
    edits: list[tuple[str, Any]], serialise: Any
) -> None:
    assert_agrees(serialise(edited(edits)).encode("utf-8", "surrogatepass"))


CANONICAL = json.dumps(VALID, separators=(",", ":")).encode()
SPLICES = [b",", b'"', b":", b" ", b"\\", b"{", b"}", b"1", b'"amount":', b',"x":1', b"\\u002c"]


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(CANONICAL)),
            st.sampled_from(
                [b",", b'"', b":", b" ", b"\\", b"{", b"}", b"1", b'"amount":', b',"x":1', b"\\u002c"]
            ),
        ),
        max_size=4,
    )
)
def test_spliced_bytes_never_make_the_json_fast_path_accept_a_rejected_payload(
    splices: list[tuple[int, bytes]],
) -> None:
    payload = CANONICAL
    for at, piece in splices:
        payload = payload[:at] + piece + payload[at:]
    assert_agrees(payload)


@pytest.mark.parametrize(
    "payload",
    [
        # A repeated key, hidden by formatting: a space before its colon.
        CANONICAL[:-1] + b',"amount" :5}',
        # A repeated key whose comma is made up for by an escaped comma in a value.
        CANONICAL.replace(b'"ev-1"', b'"ev\\u002c1"')[:-1] + b',"amount":5}',
        # A repeated key whose extra comma hides inside a string of the shadowed copy.
        CANONICAL.replace(b'"card_id":"card-1"', b'"card_id":"a,b","card_id":"card-1"'),
        # An unknown field, skipped by the decoder.
        CANONICAL[:-1] + b',"extra":{}}',
        CANONICAL[:-1] + b',"extra":[1,2]}',
    ],
)
def test_repeated_and_unknown_keys_leave_the_json_fast_path(payload: bytes) -> None:
    assert FAST_JSON(payload, NOW) is None
    assert reference(payload) is None


def test_canonical_json_takes_the_json_fast_path_with_the_engines_values() -> None:
    start = NOW - timedelta(hours=1)
    for ev in TransactionSimulator(SimulatorConfig(start=start)).events(2_000):
        payload = json.dumps(ev.event, separators=(",", ":")).encode()
        fast = FAST_JSON(payload, NOW)
        assert fast is not None
        assert fast == reference(payload)


def test_values_with_commas_and_spaces_are_fine_when_canonical() -> None:
    document = yaml.safe_load(DEFAULT_CONTRACT_PATH.read_text())
    document["fields"]["merchant_id"]["pattern"] = "[ -~]+"  # spaces and commas allowed inside
    contract = Contract.from_mapping(document)
    fast = compile_json_fast_path(contract)
    payload = json.dumps({**VALID, "merchant_id": "Shop, Inc."}, separators=(",", ":")).encode()
    assert fast(payload, NOW) == contract.validate({**VALID, "merchant_id": "Shop, Inc."}, NOW).values
    assert fast(json.dumps({**VALID, "merchant_id": " Shop, Inc."}).encode(), NOW) is None  # not trimmed
