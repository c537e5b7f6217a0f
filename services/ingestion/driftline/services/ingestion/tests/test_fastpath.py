"""The compiled fast path accepts only what the contract engine accepts, with the same values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.services.ingestion.contract import DEFAULT_CONTRACT_PATH, Contract
from driftline.services.ingestion.fastpath import compile_fast_path
from driftline.simulator import SimulatorConfig, TransactionSimulator

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CONTRACT = Contract.load()
FAST = compile_fast_path(CONTRACT)
VALID: dict[str, Any] = {
    "event_id": "ev-1",
    "card_id": "card-1",
    "merchant_id": "m-1",
    "amount": 10.0,
    "currency": "EUR",
    "merchant_category": "travel",
    "country": "FR",
    "channel": "online",
    "event_time": "2025-06-01T11:00:00.250000Z",
    "contract_version": "1",
}
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
