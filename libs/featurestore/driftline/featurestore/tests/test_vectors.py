from __future__ import annotations

import random
import struct

import hiredis
import numpy as np
import pytest

from driftline.featurestore.aggregation import Computed
from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.online import _Layout
from driftline.featurestore.testing import SMALL_SET
from driftline.featurestore.vectors import (
    EntityFeatures,
    FeatureFrame,
    FeatureStatus,
    StalenessPolicy,
    VectorEncoder,
    computed_to_proto,
    entity_features_from_proto,
)
from driftline.kit.errors import InvalidArgument

NAMES = SMALL_SET.feature_names


def raw(values: list[float] | None, t: float | None) -> list[bytes | None]:
    """An entity hash as ``HMGET key t d v`` returns it."""
    packed = None if values is None else struct.pack(f"<{len(values)}d", *values)
    return [None if t is None else repr(t).encode(), packed, None]


def raw_text(text: bytes, t: float) -> list[bytes | None]:
    """A hash the previous version wrote: the values as text in ``v``, no ``d``."""
    return [repr(t).encode(), None, text]


def parse_all(layout: _Layout, ids, raws, now, policy) -> list[EntityFeatures]:
    """What ``OnlineStore.read`` returns for these replies."""
    return layout.parse_frame(ids, raws, now, policy).entities()


def test_value_older_than_its_ttl_is_stale_never_ok() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    n = len(NAMES)
    # last_amount has ttl 30 s, the rest 60 s; read 45 s after the event.
    got = parse_all(layout, ["c1"], [raw([2.0] * n, 1000.0)], 1045.0, StalenessPolicy.SERVE)[0]
    statuses = {v.name: v.status for v in got.values}
    assert statuses["last_amount"] is FeatureStatus.STALE
    assert {s for k, s in statuses.items() if k != "last_amount"} == {FeatureStatus.OK}
    assert got.status is FeatureStatus.STALE
    assert not got.ok
    assert got.as_dict()["last_amount"] == 2.0  # SERVE keeps the value
    defaulted = parse_all(layout, ["c1"], [raw([2.0] * n, 1000.0)], 1045.0, StalenessPolicy.DEFAULT)[0]
    assert defaulted.as_dict()["last_amount"] == 0.0
    assert defaulted.values[NAMES.index("last_amount")].age_seconds == 45.0


def test_missing_values_get_defaults_and_the_vector_has_no_nan() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    n = len(NAMES)
    got = parse_all(layout, ["c1"], [raw(None, None)], 1.0, StalenessPolicy.SERVE)[0]
    assert got.status is FeatureStatus.MISSING
    vector = got.vector()
    assert vector.shape == (n,)
    assert not np.isnan(vector).any()
    assert vector[NAMES.index("mean_20s")] == -1.0
    assert got.max_age_seconds is None
    assert got.event_time is None


def test_values_of_another_shape_read_as_missing_never_misaligned() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    n = len(NAMES)
    got = parse_all(
        layout, ["c1", "c2"], [raw([1.0] * (n - 1), 10.0), raw([1.0] * n, 10.0)], 11.0, StalenessPolicy.SERVE
    )
    assert got[0].status is FeatureStatus.MISSING
    assert got[0].vector().tolist() == SMALL_SET.defaults
    assert got[1].status is FeatureStatus.OK
    assert {v.event_time for v in got[1].values} == {10.0}


def test_written_values_read_back_exactly_and_a_previous_version_s_text_values_still_read() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    n = len(NAMES)
    values = [0.1, -0.0, 1e-310, 1.7976931348623157e308, 2.0 / 3.0] + [float(i) for i in range(n - 5)]
    event_time, _, packed = layout.write_args(("c1", values, 10.0))
    assert isinstance(packed, bytes)
    assert len(packed) == 8 * n
    text = " ".join(map(repr, values)).encode()
    entities = [[str(event_time).encode(), packed, None], raw_text(text, 10.0)]
    new, old = parse_all(layout, ["c1", "c2"], entities, 11.0, StalenessPolicy.SERVE)
    exact = struct.pack(f"<{n}d", *values)  # bit for bit: -0.0 and the subnormal too
    assert struct.pack(f"<{n}d", *(v.value for v in new.values)) == exact
    assert struct.pack(f"<{n}d", *(v.value for v in old.values)) == exact
    assert new.values == old.values
    assert new.status is old.status is FeatureStatus.OK


def test_values_that_are_not_the_feature_set_s_read_as_missing() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    n = len(NAMES)
    broken = [
        raw_text(b" ".join([b"1.0"] * (n - 1)), 10.0),  # text of another shape
        raw_text(b" ".join([b"1.0"] * (n - 1) + [b"x"]), 10.0),  # text that is not numbers
        [b"10.0", struct.pack(f"<{n + 1}d", *[1.0] * (n + 1)), None],  # doubles of another shape
        [None, struct.pack(f"<{n}d", *[1.0] * n), None],  # values without an event time
    ]
    got = parse_all(layout, [f"c{i}" for i in range(len(broken))], broken, 11.0, StalenessPolicy.SERVE)
    assert [e.status for e in got] == [FeatureStatus.MISSING] * len(broken)


def test_writes_refuse_nan_and_wrong_shapes() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    with pytest.raises(InvalidArgument, match="nan"):
        layout.write_args(("c1", [float("nan")] * len(NAMES), 1.0))
    with pytest.raises(InvalidArgument, match="expected"):
        layout.write_args(("c1", [1.0], 1.0))
    with pytest.raises(InvalidArgument, match="missing feature"):
        layout.write_args(("c1", {"count_10s": 1.0}, 1.0))


def test_published_vector_round_trips_through_protobuf() -> None:
    computed = Computed(
        event_time=1_700_000_000.25, event_id="e1", values=tuple(float(i) for i in range(len(NAMES)))
    )
    message = computed_to_proto(SMALL_SET, "c1", computed, now=1_700_000_001.25)
    assert message.event_id == "e1"
    assert message.feature_set == "small"
    assert message.feature_set_version == 1
    back = entity_features_from_proto(message)
    assert back.vector().tolist() == list(computed.values)
    assert back.event_time == 1_700_000_000.25
    assert {v.status for v in back.values} == {FeatureStatus.OK}
    assert back.values[0].age_seconds == 1.0
    assert entity_features_from_proto(back.to_proto("e1")) == back


@pytest.mark.parametrize("feature_set", [SMALL_SET, TRANSACTION_FEATURES], ids=lambda fs: fs.name)
def test_encoded_vector_has_the_bytes_of_the_protobuf_one(feature_set) -> None:
    rng = random.Random(3)
    encoder = VectorEncoder(feature_set)
    specials = [0.0, -0.0, 5e-324, -1e308, float(2**53), 1.5]
    times = [0.0, 1e-6, -1.5, 1_700_000_000.123456, 4e9]
    for _ in range(500):
        values = tuple(
            rng.choice(specials) if rng.random() < 0.3 else rng.uniform(-1e6, 1e6)
            for _ in feature_set.features
        )
        computed = Computed(
            event_time=rng.choice([*times, rng.uniform(-2e9, 4e9)]),
            event_id=rng.choice(["", "e1", "é" * 100]),
            values=values,
        )
        entity = rng.choice(["", "card-1", "x" * 200])
        assert (
            encoder.encode(entity, computed)
            == computed_to_proto(feature_set, entity, computed).SerializeToString()
        )


def mixed_replies() -> tuple[list[str], list[list[bytes | None]]]:
    """Fresh, stale past one and past both ttls, missing, text, broken, and a NaN time."""
    n = len(NAMES)
    replies = [
        raw([float(i) for i in range(n)], 1000.0),
        raw([2.0] * n, 955.0),  # 45 s old: last_amount (30 s) stale
        raw([3.0] * n, 900.0),  # 100 s old: all stale
        raw(None, None),
        raw_text(" ".join(["4.5"] * n).encode(), 990.0),
        raw([1.0] * (n - 1), 1000.0),  # another shape: missing
        raw([5.0] * n, float("nan")),
    ]
    return [f"c{i}" for i in range(len(replies))], replies


@pytest.mark.parametrize("policy", [StalenessPolicy.SERVE, StalenessPolicy.DEFAULT])
def test_a_frame_holds_what_the_per_entity_view_holds(policy: StalenessPolicy) -> None:
    layout = _Layout(SMALL_SET, "p", None)
    ids, replies = mixed_replies()
    frame = layout.parse_frame(ids, replies, 1000.0, policy)
    entities = frame.entities()
    assert [e.entity_id for e in entities] == ids == list(frame.entity_ids)
    assert frame.names == tuple(NAMES)
    assert frame.values.shape == frame.statuses.shape == (len(ids), len(NAMES))
    for row, entity in enumerate(entities):
        assert [v.name for v in entity.values] == NAMES
        assert frame.values[row].tolist() == [v.value for v in entity.values]
        assert frame.statuses[row].tolist() == [int(v.status) for v in entity.values]
        assert entity == frame.entity(row)
    statuses = [e.status for e in entities]
    ok, stale, missing = FeatureStatus.OK, FeatureStatus.STALE, FeatureStatus.MISSING
    assert statuses == [ok, stale, stale, missing, ok, missing, ok]
    assert frame.missing == (3, 5)
    # The stale ones: last_amount only at 45 s, everything at 100 s.
    assert [v.name for v in entities[1].values if v.status is stale] == ["last_amount"]
    assert all(v.status is stale for v in entities[2].values)
    # Missing rows: defaults, no time, no age; the frame holds NaN for them.
    assert entities[3].vector().tolist() == SMALL_SET.defaults
    assert entities[3].values[0].event_time is None
    assert entities[3].values[0].age_seconds is None
    assert np.isnan(frame.event_times[[3, 5]]).all()
    assert np.isnan(frame.ages[[3, 5]]).all()
    assert frame.ages[1] == 45.0
    assert frame.event_times[1] == 955.0
    assert entities[4].vector().tolist() == [4.5] * len(NAMES)
    if policy is StalenessPolicy.DEFAULT:
        assert entities[2].vector().tolist() == SMALL_SET.defaults
        assert entities[1].as_dict()["last_amount"] == 0.0
    else:
        assert entities[2].vector().tolist() == [3.0] * len(NAMES)
        assert entities[1].as_dict()["last_amount"] == 2.0


def test_a_time_that_is_not_a_number_reads_as_missing_and_the_other_rows_still_read() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    n = len(NAMES)
    torn = raw([7.0] * n, 1000.0)
    torn[0] = b"not-a-time"
    garbled_text = raw_text(" ".join(["4.5"] * n).encode(), 990.0)
    garbled_text[0] = b"\xff"
    frame = layout.parse_frame(
        ["a", "b", "c"], [torn, raw([1.0] * n, 1000.0), garbled_text], 1000.0, StalenessPolicy.SERVE
    )
    assert frame.missing == (0, 2)
    assert frame.values[0].tolist() == frame.values[2].tolist() == SMALL_SET.defaults
    assert frame.values[1].tolist() == [1.0] * n
    assert (frame.statuses[1] == FeatureStatus.OK).all()


def test_a_frame_s_rows_and_columns_can_be_taken_and_rebuilt_from_entities() -> None:
    layout = _Layout(SMALL_SET, "p", None)
    ids, replies = mixed_replies()
    frame = layout.parse_frame(ids, replies, 1000.0, StalenessPolicy.SERVE)
    picked = frame.take([4, 1])
    assert picked.entity_ids == ("c4", "c1")
    assert frame.take([5, 0, 3]).missing == (0, 2)
    assert picked.entities() == [frame.entity(4), frame.entity(1)]
    columns = [NAMES.index("last_amount"), 0]
    narrow = frame.select(columns)
    assert narrow.names == ("last_amount", NAMES[0])
    assert narrow.values.tolist() == frame.values[:, columns].tolist()
    assert [v.status for v in narrow.entity(1).values] == [FeatureStatus.STALE, FeatureStatus.OK]
    rebuilt = FeatureFrame.from_entities(frame.entities())
    assert rebuilt.entities() == frame.entities()
    assert rebuilt.missing == frame.missing
    assert narrow.missing == frame.missing
    with pytest.raises(ValueError, match="at least one"):
        FeatureFrame.from_entities([])


def test_an_empty_read_is_an_empty_frame() -> None:
    frame = _Layout(SMALL_SET, "p", None).parse_frame([], [], 1.0, StalenessPolicy.SERVE)
    assert len(frame) == 0
    assert frame.values.shape == (0, len(NAMES))
    assert frame.entities() == []


def test_a_read_request_is_what_hiredis_packs_for_the_same_commands() -> None:
    layout = _Layout(SMALL_SET, "dl:fs", None)
    ids = ["c1", "card-ü-42", "x" * 300, ""]
    expected = b"".join(
        hiredis.pack_command((b"HMGET", layout.key(e).encode(), b"t", b"d", b"v")) for e in ids
    )
    assert layout.read_request(ids) == expected
