"""Every rule of the contract engine and of the transaction contract v1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.services.ingestion.contract import (
    DEFAULT_CONTRACT_PATH,
    Contract,
    Reason,
    UnknownFields,
    Validated,
)
from driftline.services.ingestion.errors import ContractError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FIELDS = [
    "event_id",
    "card_id",
    "merchant_id",
    "amount",
    "currency",
    "merchant_category",
    "country",
    "channel",
    "event_time",
    "contract_version",
]


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract.load()


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "ev-1",
        "card_id": "card-000001",
        "merchant_id": "m-us-e001",
        "amount": 42.5,
        "currency": "USD",
        "merchant_category": "grocery",
        "country": "US",
        "channel": "pos",
        "event_time": "2025-06-01T11:59:00.000000Z",
        "contract_version": "1",
    }
    base.update(changes)
    return base


def reason(contract: Contract, ev: dict[str, Any], now: datetime = NOW) -> Reason | None:
    result = contract.validate(ev, now)
    return result.violations[0].reason if result.violations else None


def test_the_packaged_contract_is_transaction_v1(contract: Contract) -> None:
    assert DEFAULT_CONTRACT_PATH.name == "transaction.v1.yaml"
    assert (contract.name, contract.version) == ("transaction", "1")
    assert contract.field_names == FIELDS
    assert contract.max_payload_bytes == 16384
    assert contract.unknown_fields is UnknownFields.REJECT


def test_a_valid_event_passes_with_typed_values(contract: Contract) -> None:
    result = contract.validate(event(), NOW)
    assert result.ok
    assert result.values["amount"] == 42.5
    assert result.values["event_time"] == datetime(2025, 6, 1, 11, 59, tzinfo=UTC)


def test_values_are_normalised_before_the_rules(contract: Contract) -> None:
    result = contract.validate(
        event(
            event_id="  ev-1 ",
            card_id="\tcard-1\n",
            currency=" usd",
            country="us ",
            channel="POS",
            merchant_category="Gift_Cards",
            event_time="2025-06-01T13:30:00+02:00",
            amount=7,
        ),
        NOW,
    )
    assert result.ok, result.violations
    v = result.values
    assert (v["event_id"], v["card_id"], v["currency"], v["country"]) == ("ev-1", "card-1", "USD", "US")
    assert (v["channel"], v["merchant_category"]) == ("pos", "gift_cards")
    assert v["event_time"] == datetime(2025, 6, 1, 11, 30, tzinfo=UTC)
    assert v["event_time"].tzinfo is UTC
    assert v["amount"] == 7.0
    assert isinstance(v["amount"], float)


@pytest.mark.parametrize("name", FIELDS)
def test_a_missing_required_field_is_missing_field(contract: Contract, name: str) -> None:
    ev = event()
    del ev[name]
    result = contract.validate(ev, NOW)
    assert [(v.field, v.reason) for v in result.violations] == [(name, Reason.MISSING_FIELD)]
    assert "missing" in result.violations[0].detail


@pytest.mark.parametrize("name", FIELDS)
def test_a_null_required_field_is_missing_field(contract: Contract, name: str) -> None:
    result = contract.validate(event(**{name: None}), NOW)
    assert [(v.field, v.reason) for v in result.violations] == [(name, Reason.MISSING_FIELD)]
    assert "null" in result.violations[0].detail


def test_an_unknown_field_is_rejected_by_default(contract: Contract) -> None:
    result = contract.validate(event(cvv="123", note="x"), NOW)
    assert [v.reason for v in result.violations] == [Reason.UNKNOWN_FIELD]
    assert result.violations[0].field is None
    assert "cvv, note" in result.violations[0].detail


def test_unknown_fields_are_dropped_when_the_contract_says_drop() -> None:
    document = yaml.safe_load(DEFAULT_CONTRACT_PATH.read_text())
    document["unknown_fields"] = "drop"
    contract = Contract.from_mapping(document)
    result = contract.validate(event(cvv="123"), NOW)
    assert result.ok
    assert "cvv" not in result.values


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("amount", "12.50"),
        ("amount", True),
        ("amount", [1]),
        ("amount", {"value": 1}),
        ("card_id", 12345),
        ("channel", False),
        ("merchant_category", ["grocery"]),
        ("event_time", 1717243140),
        ("contract_version", 1),
    ],
)
def test_a_value_of_the_wrong_type_is_wrong_type(contract: Contract, name: str, value: Any) -> None:
    assert reason(contract, event(**{name: value})) is Reason.WRONG_TYPE


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_not_finite(contract: Contract, value: float) -> None:
    assert reason(contract, event(amount=value)) is Reason.NOT_FINITE


@pytest.mark.parametrize("value", [0, 0.0, -0.01, -5, 1_000_000.01, 1e9, 10**400])
def test_amounts_outside_the_range_are_out_of_range(contract: Contract, value: float) -> None:
    assert reason(contract, event(amount=value)) is Reason.OUT_OF_RANGE


@pytest.mark.parametrize("value", [0.01, 1, 999_999.99, 1_000_000])
def test_amounts_inside_the_range_pass(contract: Contract, value: float) -> None:
    assert reason(contract, event(amount=value)) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("channel", "telepathy"),
        ("merchant_category", "weapons"),
        ("contract_version", "2"),
        ("contract_version", "1.0"),
    ],
)
def test_a_value_outside_its_enum_is_not_in_enum(contract: Contract, name: str, value: str) -> None:
    assert reason(contract, event(**{name: value})) is Reason.NOT_IN_ENUM


@pytest.mark.parametrize("name", ["event_id", "card_id", "merchant_id"])
def test_ids_longer_than_64_characters_are_too_long(contract: Contract, name: str) -> None:
    assert reason(contract, event(**{name: "x" * 65})) is Reason.TOO_LONG
    assert reason(contract, event(**{name: "x" * 64})) is None


@pytest.mark.parametrize("name", ["event_id", "card_id", "merchant_id"])
def test_blank_ids_are_too_short(contract: Contract, name: str) -> None:
    assert reason(contract, event(**{name: ""})) is Reason.TOO_SHORT
    assert reason(contract, event(**{name: "   "})) is Reason.TOO_SHORT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("event_id", "ev 1"),
        ("card_id", "card\x00"),
        ("merchant_id", "méchant"),
        ("country", "USA"),
        ("country", "U1"),
        ("currency", "$"),
        ("currency", "US"),
    ],
)
def test_values_that_do_not_match_the_pattern_are_pattern_mismatch(
    contract: Contract, name: str, value: str
) -> None:
    assert reason(contract, event(**{name: value})) is Reason.PATTERN_MISMATCH


def test_a_lone_surrogate_is_invalid_utf8(contract: Contract) -> None:
    assert reason(contract, event(merchant_id="m-\ud800")) is Reason.INVALID_UTF8


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2025-06-01",
        "2025-06-01T11:59:00",
        "2025-06-01T11:59:00+0200",
        "2025-02-30T00:00:00Z",
        "2025-06-01T23:59:60Z",
        "0001-01-01T00:00:00+01:00",
        "\uff12\uff10\uff12\uff15-06-01T11:59:00Z",  # full-width digits
        "2025-06-01T11:59:00.1234567890Z",
        "",
    ],
)
def test_malformed_event_times_are_invalid_timestamp(contract: Contract, value: str) -> None:
    assert reason(contract, event(event_time=value)) is Reason.INVALID_TIMESTAMP


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-01t11:59:00z", datetime(2025, 6, 1, 11, 59, tzinfo=UTC)),
        ("2025-06-01 11:59:00Z", datetime(2025, 6, 1, 11, 59, tzinfo=UTC)),
        ("2025-06-01T06:59:00-05:00", datetime(2025, 6, 1, 11, 59, tzinfo=UTC)),
        ("2025-06-01T11:59:00.123456789Z", datetime(2025, 6, 1, 11, 59, 0, 123456, tzinfo=UTC)),
    ],
)
def test_rfc3339_variants_are_accepted_and_converted_to_utc(
    contract: Contract, value: str, expected: datetime
) -> None:
    result = contract.validate(event(event_time=value), NOW)
    assert result.ok, result.violations
    assert result.values["event_time"] == expected


def test_event_times_beyond_five_minutes_ahead_are_in_the_future(contract: Contract) -> None:
    def at(delta: timedelta) -> str:
        return (NOW + delta).isoformat()

    assert reason(contract, event(event_time=at(timedelta(seconds=301)))) is Reason.EVENT_TIME_IN_FUTURE
    assert reason(contract, event(event_time=at(timedelta(days=365)))) is Reason.EVENT_TIME_IN_FUTURE
    assert reason(contract, event(event_time=at(timedelta(seconds=299)))) is None


def test_event_times_older_than_seven_days_are_too_old(contract: Contract) -> None:
    def at(delta: timedelta) -> str:
        return (NOW - delta).isoformat()

    assert reason(contract, event(event_time=at(timedelta(days=7, seconds=1)))) is Reason.EVENT_TIME_TOO_OLD
    assert reason(contract, event(event_time=at(timedelta(days=3650)))) is Reason.EVENT_TIME_TOO_OLD
    assert reason(contract, event(event_time=at(timedelta(days=7, seconds=-1)))) is None


def test_every_violation_is_reported_and_the_first_field_names_the_reason(contract: Contract) -> None:
    ev = event(amount="x", channel="telepathy", extra=1)
    del ev["card_id"]
    result = contract.validate(ev, NOW)
    assert [v.reason for v in result.violations] == [
        Reason.MISSING_FIELD,
        Reason.WRONG_TYPE,
        Reason.NOT_IN_ENUM,
        Reason.UNKNOWN_FIELD,
    ]
    assert [v.field for v in result.violations] == ["card_id", "amount", "channel", None]


def test_an_optional_field_may_be_absent() -> None:
    contract = Contract.from_mapping(
        {
            "contract": "t",
            "version": 1,
            "max_payload_bytes": 100,
            "fields": {"a": {"type": "string"}, "b": {"type": "number", "required": False, "minimum": 1}},
        }
    )
    assert contract.validate({"a": "x"}, NOW) == Validated({"a": "x"}, [])
    assert contract.validate({"a": "x", "b": None}, NOW).ok
    assert contract.validate({"a": "x", "b": 0}, NOW).violations[0].reason is Reason.OUT_OF_RANGE


def test_number_bounds_are_inclusive_unless_exclusive() -> None:
    contract = Contract.from_mapping(
        {
            "contract": "t",
            "version": "1",
            "max_payload_bytes": 100,
            "fields": {"n": {"type": "number", "minimum": 1, "exclusive_maximum": 2}},
        }
    )
    assert contract.validate({"n": 1}, NOW).ok
    assert contract.validate({"n": 0.99}, NOW).violations[0].reason is Reason.OUT_OF_RANGE
    assert contract.validate({"n": 2}, NOW).violations[0].reason is Reason.OUT_OF_RANGE


def _document(**field_rules: Any) -> dict[str, Any]:
    return {"contract": "t", "version": "1", "max_payload_bytes": 100, "fields": {"f": field_rules}}


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"contract": "t", "version": "1", "fields": {"f": {"type": "string"}}},
        {"contract": "t", "version": "1", "max_payload_bytes": 0, "fields": {"f": {"type": "string"}}},
        {"contract": "t", "version": "1", "max_payload_bytes": 10, "fields": {}},
        {"contract": "t", "version": "1", "max_payload_bytes": 10, "fields": {"f": "string"}},
        {"contract": "t", "version": "1", "max_payload_bytes": 10, "unknown_fields": "keep", "fields": {}},
        {**_document(type="string"), "surprise": 1},
        _document(type="text"),
        _document(type="string", maxlength=3),
        _document(type="number", pattern="x"),
        _document(type="string", minimum=1),
        _document(type="timestamp", enum=["a"]),
        _document(type="string", pattern="("),
        _document(type="string", enum="abc"),
        _document(type="string", normalize=["reverse"]),
        _document(type="string", max_length=-1),
        _document(type="number", minimum="one"),
        _document(type="number", maximum=float("nan")),
        _document(type="string", required="yes"),
        _document(type="timestamp", max_age_s=10**14),  # past the dates Python can represent
        _document(type="timestamp", max_future_s=-1),
    ],
)
def test_a_broken_contract_file_is_refused_at_load(document: Any) -> None:
    with pytest.raises(ContractError):
        Contract.from_mapping(document)


def test_an_unreadable_contract_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError):
        Contract.load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields: [unclosed")
    with pytest.raises(ContractError):
        Contract.load(bad)
