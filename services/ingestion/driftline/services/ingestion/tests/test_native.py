"""The native batch fast path accepts only what the Python gate accepts, with the same clean bytes."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import hiredis
import pytest
from driftline_fastgate import resp_set_commands
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.kit.kafka import CONTENT_TYPE, header
from driftline.kit.testing import FakeMessage
from driftline.services.ingestion.contract import Contract
from driftline.services.ingestion.gate import Accepted, Gate, epoch_micros, timestamp, to_clean
from driftline.services.ingestion.native import compile_batch_gate
from driftline.services.ingestion.produce import live_traffic
from driftline.services.ingestion.testing import valid_event
from driftline.services.ingestion.traffic import Kind, simulated

NOW = datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
INGESTED = timestamp(NOW + timedelta(milliseconds=3))
CONTRACT = Contract.load()
GATE = Gate(CONTRACT)
NATIVE = compile_batch_gate(CONTRACT)
VALID: dict[str, Any] = valid_event()


def native_entries(messages: list[FakeMessage], now: datetime = NOW) -> list[Any]:
    assert NATIVE is not None
    now_us = epoch_micros(now)
    cleans, event_ids, sources, declined = NATIVE.examine(
        messages, now_us, (INGESTED.seconds, INGESTED.nanos)
    )
    assert declined == [i for i, c in enumerate(cleans) if c is None]
    return [None if c is None else (*c, e, s) for c, e, s in zip(cleans, event_ids, sources, strict=True)]


def python_entry(message: FakeMessage, now: datetime = NOW) -> tuple[bytes, bytes, bytes, bytes] | None:
    verdict = GATE.examine(message.value(), header(message, CONTENT_TYPE), now)  # type: ignore[arg-type]
    if not isinstance(verdict, Accepted):
        return None
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    clean = to_clean(
        verdict.values,
        ingested_at=INGESTED,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
    )
    source = f"{topic}/{partition}/{offset}".encode()
    return clean.SerializeToString(), clean.card_id.encode(), clean.event_id.encode(), source


def message(
    payload: bytes | None, content_type: bytes | None = b"application/json", offset: int = 7
) -> FakeMessage:
    headers = [] if content_type is None else [(CONTENT_TYPE, content_type)]
    return FakeMessage(payload, _topic="raw.t", _partition=3, _offset=offset, _headers=headers)


# Values near the contract's edges, as JSON text (some of it not valid JSON).
strings = st.text(alphabet=st.sampled_from(list('aZ09 -_!~,:{}[]"\\\u00e9\u2028/')), max_size=70)
numbers = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "1e2",
            "1E+2",
            "-0",
            "0",
            "0.0",
            "1000000",
            "1000000.0000001",
            "1e400",
            "01",
            "1.",
            "2.5e-3",
            "NaN",
            "-",
        ]
    ),
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        # Around the event-time window's edges: now + 300 s and now - 7 days, to the microsecond.
        edge = NOW + draw(st.sampled_from([timedelta(seconds=300), -timedelta(days=7), timedelta(0)]))
        moment = edge + timedelta(microseconds=draw(st.integers(-2, 2)))
        hours = draw(st.integers(-23, 23))
        offset = timedelta(hours=hours, minutes=draw(st.sampled_from([0, 30])) * (1 if hours >= 0 else -1))
        text = moment.astimezone(UTC).replace(tzinfo=None) + offset
        sign = "+" if offset >= timedelta(0) else "-"
        minutes = abs(int(offset.total_seconds())) // 60
        return f"{text.isoformat(timespec='microseconds')}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    year = draw(st.sampled_from([1, 2, 1969, 2024, 2025, 9998, 9999]))
    parts = [draw(st.integers(0, n)) for n in (13, 32, 24, 60, 60)]
    fraction = draw(st.sampled_from(["", ".", ".1", ".123456", ".1234567", ".123456789", ".1234567890"]))
    separator = draw(st.sampled_from(["T", "t", " ", "X"]))
    zone = draw(
        st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+23:59", "+24:00", "+00:60", "-05:30", "+0100"])
    )
    month, day, hour, minute, second = parts
    return f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


field_values: dict[str, Any] = {
    "event_id": strings,
    "card_id": strings,
    "merchant_id": strings,
    "currency": st.sampled_from(["EUR", "eur", " EUR", "EU", "EURO"]) | strings,
    "merchant_category": st.sampled_from(["travel", "Travel", " travel", "crypto"]) | strings,
    "country": st.sampled_from(["FR", "fr", "F1"]) | strings,
    "channel": st.sampled_from(["online", "ONLINE", "atm"]) | strings,
    "contract_version": st.sampled_from(["1", " 1", "2"]) | strings,
}


@st.composite
def near_canonical_payloads(draw: st.DrawFn) -> bytes:
    """Canonical events with a few fields changed, dropped, repeated or added, in JSON of varied spelling."""
    items = [(name, json.dumps(value)) for name, value in VALID.items()]
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(items) - 1))
        name = items[i][0]
        action = draw(st.sampled_from(["change", "change", "change", "drop", "repeat", "extra", "type"]))
        if action == "change":
            if name == "amount":
                value = draw(numbers)
            elif name == "event_time":
                value = json.dumps(draw(timestamps()))
            else:
                value = json.dumps(draw(field_values.get(name, strings)), ensure_ascii=draw(st.booleans()))
            items[i] = (name, value)
        elif action == "drop":
            items.pop(i)
        elif action == "repeat":
            items.insert(draw(st.integers(0, len(items))), items[i])
        elif action == "extra":
            items.append((draw(st.sampled_from(["extra", "", "Event_id"])), "1"))
        else:
            items[i] = (name, draw(st.sampled_from(["null", "true", "[]", "{}", '"10.5"', "10.5"])))
    items = draw(st.permutations(items))
    space = st.sampled_from(["", "", " ", "\n", "\t"])
    body = ",".join(f'{draw(space)}"{name}"{draw(space)}:{draw(space)}{value}' for name, value in items)
    return f"{draw(space)}{{{body}}}{draw(space)}".encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(near_canonical_payloads(), min_size=1, max_size=6))
def test_native_accepts_only_what_the_python_gate_accepts_with_the_same_clean_bytes(
    payloads: list[bytes],
) -> None:
    messages = [message(p, offset=i) for i, p in enumerate(payloads)]
    for m, entry in zip(messages, native_entries(messages), strict=True):
        if entry is not None:
            assert tuple(entry) == python_entry(m), m.value()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(near_canonical_payloads(), min_size=1, max_size=6))
def test_with_zero_and_negative_amounts_allowed_too(payloads: list[bytes]) -> None:
    fields = {**_fields(CONTRACT), "amount": {"type": "number", "minimum": -1e30, "maximum": 1e30}}
    contract = Contract.from_mapping({**_document(CONTRACT), "fields": fields})
    native, python = compile_batch_gate(contract), Gate(contract)
    assert native is not None
    messages = [message(p, offset=i) for i, p in enumerate(payloads)]
    cleans, _, _, _ = native.examine(messages, epoch_micros(NOW), (INGESTED.seconds, INGESTED.nanos))
    for m, clean in zip(messages, cleans, strict=True):
        if clean is not None:
            verdict = python.examine(m.value(), None, NOW)
            assert isinstance(verdict, Accepted), m.value()
            expected = to_clean(
                verdict.values,
                ingested_at=INGESTED,
                source_topic="raw.t",
                source_partition=3,
                source_offset=m.offset(),
            )
            assert clean[0] == expected.SerializeToString(), m.value()


def test_every_valid_simulated_event_takes_the_native_path() -> None:
    now = datetime.now(UTC)
    traffic = live_traffic(seed=5, count=3000, rate=None, garbage_rate=0.0, duplicate_rate=0.0, now=now)
    raw = list(simulated(traffic, now=now))
    messages = [message(m.value, offset=i) for i, m in enumerate(raw) if m.kind is Kind.VALID]
    entries = native_entries(messages, now)
    assert len(entries) == len(messages) > 2900
    for m, entry in zip(messages, entries, strict=True):
        assert entry is not None
        assert tuple(entry) == python_entry(m, now)


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (json.dumps(VALID).encode(), b"application/x-protobuf"),
        (json.dumps(VALID).encode(), b"application/json; charset=utf-8"),
        (json.dumps(VALID).encode(), b"text/plain"),
        (None, None),
        (b"", None),
        (json.dumps({**VALID, "card_id": "card-\u00e9"}).encode(), None),  # a \u escape
        (json.dumps({**VALID, "card_id": "card-\u00e9"}, ensure_ascii=False).encode(), None),  # UTF-8
        (json.dumps({**VALID, "card_id": " card-1"}).encode(), None),  # valid, but not canonical
        (json.dumps({**VALID, "currency": "eur"}).encode(), None),  # valid, but not canonical
        (json.dumps({**VALID, "event_id": "x" * 20_000}).encode(), None),  # over max_payload_bytes
    ],
)
def test_what_is_not_canonical_json_goes_the_python_way(
    payload: bytes | None, content_type: bytes | None
) -> None:
    assert native_entries([message(payload, content_type)]) == [None]


@pytest.mark.parametrize(
    "headers", [None, [], [(CONTENT_TYPE, None)], [("other", b"x")], [(CONTENT_TYPE, b"application/json")]]
)
def test_json_is_the_content_type_when_none_is_given(headers: Any) -> None:
    m = replace(message(json.dumps(VALID).encode()), _headers=headers)
    [entry] = native_entries([m])
    assert entry is not None
    assert tuple(entry) == python_entry(m)


def test_the_last_content_type_header_counts_as_in_the_python_gate() -> None:
    payload = json.dumps(VALID).encode()
    first_json = replace(
        message(payload), _headers=[(CONTENT_TYPE, b"application/json"), (CONTENT_TYPE, b"text/plain")]
    )
    last_json = replace(
        message(payload), _headers=[(CONTENT_TYPE, b"text/plain"), (CONTENT_TYPE, b"application/json")]
    )
    assert native_entries([first_json])[0] is None
    assert native_entries([last_json])[0] is not None


def contract_with(**field_changes: Any) -> Contract:
    document: dict[str, Any] = {
        "contract": "t",
        "version": "1",
        "max_payload_bytes": 4096,
        "fields": {
            "event_id": {"type": "string"},
            "card_id": {"type": "string"},
            "amount": {"type": "number"},
            "event_time": {"type": "timestamp"},
        },
    }
    for name, rules in field_changes.items():
        document["fields"][name] = rules
    return Contract.from_mapping(document)


@pytest.mark.parametrize(
    "pattern",
    [
        "[[:alpha:]]+",
        "[a-z&&[^x]]+",
        "a{,3}",
        "(?=a)a",
        "(?<=a)b",
        "a\\Z",
        "[0-9--5]+",
        "\u00e9+",
        "(?x)[ a]+",
        "(?ix:[ a])+",
        "\\<a",
        "a\\b{end}",
    ],
)
# Python itself warns that these patterns may change meaning (a FutureWarning): that is the point.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_pattern_rust_could_read_otherwise_gets_no_native_gate(pattern: str) -> None:
    assert compile_batch_gate(contract_with(card_id={"type": "string", "pattern": pattern})) is None


def test_a_contract_whose_fields_do_not_fill_the_clean_event_gets_no_native_gate() -> None:
    # merchant_id and the other clean-event fields have no value in this contract.
    contract = contract_with()
    assert compile_batch_gate(contract) is None


def test_an_enum_value_normalisation_would_change_is_never_accepted() -> None:
    spec = {"type": "string", "normalize": ["lower"], "enum": ["online", "POS"]}
    contract = Contract.from_mapping(
        {**_document(CONTRACT), "fields": {**_fields(CONTRACT), "channel": spec}}
    )
    gate = compile_batch_gate(contract)
    assert gate is not None
    python = Gate(contract)
    for channel, accepted in [("online", True), ("pos", False), ("POS", False)]:
        payload = json.dumps({**VALID, "channel": channel}).encode()
        assert isinstance(python.examine(payload, None, NOW), Accepted) is accepted
        [entry], _, _, _ = gate.examine([message(payload)], epoch_micros(NOW), (0, 0))
        assert (entry is not None) is accepted


def _fields(contract: Contract) -> dict[str, Any]:
    raw = {
        "event_id": {"type": "string", "min_length": 1},
        "card_id": {"type": "string", "min_length": 1},
        "merchant_id": {"type": "string"},
        "amount": {"type": "number", "exclusive_minimum": 0},
        "currency": {"type": "string"},
        "merchant_category": {"type": "string"},
        "country": {"type": "string"},
        "channel": {"type": "string"},
        "event_time": {"type": "timestamp"},
        "contract_version": {"type": "string"},
    }
    assert set(raw) == set(contract.field_names)
    return raw


def _document(contract: Contract) -> dict[str, Any]:
    return {
        "contract": contract.name,
        "version": contract.version,
        "max_payload_bytes": contract.max_payload_bytes,
    }


def test_claims_are_packed_as_redis_commands() -> None:
    packed = resp_set_commands(
        b"p:", [b"ev-1", b"ev-\xc3\xa9"], [b"raw/0/1", b""], [b"NX", b"GET", b"EX", b"60"]
    )
    reader = hiredis.Reader()
    # A server reads a command as an array of bulk strings, which is what a reply parser reads too.
    reader.feed(packed)
    assert reader.gets() == [b"SET", b"p:ev-1", b"raw/0/1", b"NX", b"GET", b"EX", b"60"]
    assert reader.gets() == [b"SET", b"p:ev-\xc3\xa9", b"", b"NX", b"GET", b"EX", b"60"]
    assert reader.gets() is False


def test_claims_need_one_value_per_key() -> None:
    with pytest.raises(ValueError, match="as many values as keys"):
        resp_set_commands(b"p:", [b"a"], [], [])


@pytest.mark.parametrize("amount", ["0", "-0", "-0.0", "0.0", "-1.5", "1e-320"])
def test_zeros_and_negative_numbers_encode_as_upb_writes_them(amount: str) -> None:
    fields = {**_fields(CONTRACT), "amount": {"type": "number", "minimum": -2}}
    contract = Contract.from_mapping({**_document(CONTRACT), "fields": fields})
    gate = compile_batch_gate(contract)
    assert gate is not None
    payload = json.dumps(VALID).replace('"amount": 10.0', f'"amount": {amount}').encode()
    assert f'"amount": {amount},'.encode() in payload
    [clean], [event_id], [source], declined = gate.examine([message(payload)], epoch_micros(NOW), (1, 2))
    assert declined == []
    assert clean is not None
    assert (event_id, source) == (b"ev-1", b"raw.t/3/7")
    verdict = Gate(contract).examine(payload, None, NOW)
    assert isinstance(verdict, Accepted)
    expected = to_clean(
        verdict.values,
        ingested_at=Timestamp(seconds=1, nanos=2),
        source_topic="raw.t",
        source_partition=3,
        source_offset=7,
    )
    assert clean == (expected.SerializeToString(), b"card-1")
