from __future__ import annotations

import math
import random

import pytest

from driftline.featurestore.aggregation import AddOutcome, EntityHistory, aggregate, replay
from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.events import Event, decode_events, encode_event
from driftline.featurestore.testing import SMALL_SET, event

# Hand-computed example: four events of one card.
E1 = event("e1", 100.0, 10.0, "m1")
E2 = event("e2", 105.0, 20.0, "m2")
E3 = event("e3", 118.0, 30.0, "m1")
E4 = event("e4", 121.0, 40.0, "m3")


def values(history: EntityHistory, e: Event) -> dict[str, float]:
    return history.values_for(e).as_dict(SMALL_SET)


def test_window_values_match_hand_computed_example() -> None:
    history = EntityHistory(SMALL_SET)
    for e in (E1, E2, E3, E4):
        assert history.add(e) is AddOutcome.ADDED

    at_e4 = values(history, E4)
    assert at_e4["count_10s"] == 2  # e3, e4: t > 111
    assert at_e4["sum_10s"] == 70
    assert at_e4["count_tumbling_60s"] == 1  # window [120, 180): e4 only
    assert at_e4["sum_tumbling_60s"] == 40
    assert at_e4["count_hopping_30s"] == 4  # window [100, 130)
    assert at_e4["mean_20s"] == 30  # e2, e3, e4: t > 101
    assert at_e4["std_20s"] == pytest.approx(math.sqrt(200 / 3), abs=1e-12)
    assert at_e4["min_20s"] == 20
    assert at_e4["max_20s"] == 40
    assert at_e4["merchants_20s"] == 3
    assert at_e4["last_amount"] == 40
    assert at_e4["since_last"] == 3

    at_e3 = values(history, E3)  # as of e3: e4 is in the future and never counts
    assert at_e3["count_tumbling_60s"] == 3  # window [60, 120): e1, e2, e3
    assert at_e3["sum_tumbling_60s"] == 60
    assert at_e3["count_hopping_30s"] == 3  # window [90, 120)
    assert at_e3["count_10s"] == 1  # t > 108: e3 only
    assert at_e3["last_amount"] == 30
    assert at_e3["since_last"] == 13


def test_first_event_gets_defaults_where_there_is_no_previous_event() -> None:
    history = EntityHistory(SMALL_SET)
    history.add(E1)
    at_e1 = values(history, E1)
    assert at_e1["since_last"] == 999.0
    assert at_e1["std_20s"] == 0.0
    assert at_e1["count_10s"] == 1


def test_empty_window_gives_default_mean_and_zero_count() -> None:
    history = EntityHistory(SMALL_SET)
    history.add(E1)
    later = history.at(500.0)
    assert later is not None
    as_dict = later.as_dict(SMALL_SET)
    assert as_dict["count_10s"] == 0
    assert as_dict["mean_20s"] == -1.0  # the feature's default
    assert as_dict["last_amount"] == 10  # no window: the newest event ever
    assert later.event_id == "e1"
    assert history.at(50.0) is None


def test_late_event_within_allowed_lateness_is_counted_in() -> None:
    history = EntityHistory(SMALL_SET, allowed_lateness_s=5.0)
    for e in (E1, E2, E3, E4):
        history.add(e)
    late = event("e5", 117.0, 5.0, "m9")
    assert history.add(late) is AddOutcome.LATE
    latest = history.latest()
    assert latest is not None
    assert latest.event_id == "e4"
    as_dict = latest.as_dict(SMALL_SET)
    assert as_dict["count_10s"] == 3  # e5 (117 > 111), e3, e4
    assert as_dict["sum_10s"] == 75
    assert as_dict["since_last"] == 3  # newest two are still e3 and e4
    # The late event's own vector is as of its own time.
    own = values(history, late)
    assert own["last_amount"] == 5
    assert own["count_10s"] == 1  # e5 only: e2 at 105 is not after 107


def test_event_later_than_allowed_lateness_is_dropped() -> None:
    history = EntityHistory(SMALL_SET, allowed_lateness_s=5.0)
    for e in (E1, E2, E3, E4):
        history.add(e)
    before = history.latest()
    assert history.add(event("e6", 115.0, 1000.0)) is AddOutcome.TOO_LATE
    assert history.latest() == before
    assert "e6" not in history


def test_replayed_event_is_not_counted_twice() -> None:
    history = EntityHistory(SMALL_SET)
    for e in (E1, E2, E3, E4):
        history.add(e)
    before = history.latest()
    assert history.add(E2) is AddOutcome.DUPLICATE
    assert history.add(E4) is AddOutcome.DUPLICATE
    assert history.latest() == before


def test_prune_keeps_what_windows_and_lateness_need_and_the_newest_two() -> None:
    history = EntityHistory(SMALL_SET, allowed_lateness_s=5.0)  # retention 60 + 5 s
    for e in (E1, E2, E3, E4, event("e7", 171.0, 1.0)):
        history.add(e)
    removed = history.prune()
    assert [e.event_id for e in removed] == ["e1", "e2"]  # older than 171 - 65 = 106
    assert [e.event_id for e in history.events] == ["e3", "e4", "e7"]
    lonely = EntityHistory(SMALL_SET)
    lonely.add(E1)
    lonely.add(event("e8", 10_000.0, 1.0))
    assert lonely.prune() == []
    assert values(lonely, lonely.events[-1])["since_last"] == 9900.0


def test_home_country_is_the_first_seen_country() -> None:
    history = EntityHistory(TRANSACTION_FEATURES)
    home = Event(
        "a",
        "c1",
        10.0,
        {
            "amount": 5.0,
            "merchant_id": "m",
            "merchant_category": "grocery",
            "country": "NL",
            "channel": "pos",
        },
    )
    away = Event(
        "b",
        "c1",
        11.0,
        {
            "amount": 500.0,
            "merchant_id": "m2",
            "merchant_category": "jewelry",
            "country": "BR",
            "channel": "online",
        },
    )
    history.add(home)
    history.add(away)
    at_away = history.values_for(away).as_dict(TRANSACTION_FEATURES)
    assert at_away["is_foreign"] == 1.0
    assert at_away["foreign_ratio_10m"] == 0.5
    assert at_away["risky_category"] == 1.0
    assert history.values_for(home).as_dict(TRANSACTION_FEATURES)["is_foreign"] == 0.0


def random_events(seed: int, entities: int = 5, count: int = 400) -> list[Event]:
    rng = random.Random(seed)
    t = 1_700_000_000.0
    out = []
    for i in range(count):
        t += rng.expovariate(2.0)
        out.append(
            Event(
                event_id=f"ev{i:05d}",
                entity_id=f"card{rng.randrange(entities)}",
                event_time=round(t, 6),
                fields={
                    "amount": round(rng.lognormvariate(3, 1), 2),
                    "merchant_id": f"m{rng.randrange(30)}",
                    "merchant_category": rng.choice(["grocery", "jewelry", "fuel"]),
                    "country": rng.choice(["NL", "NL", "NL", "DE"]),
                    "channel": rng.choice(["pos", "online"]),
                },
            )
        )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_with_state_reloads_matches_offline_replay_exactly(seed: int) -> None:
    events = random_events(seed)
    offline = {e.event_id: c.values for e, c in replay(TRANSACTION_FEATURES, events)}

    # The stream: each entity's state is saved and reloaded around every event, as through Redis.
    stored: dict[str, tuple[list[bytes], object]] = {}
    online = {}
    for _i, e in enumerate(events):
        payloads, profile = stored.get(e.entity_id, ([], None))
        history = EntityHistory(
            TRANSACTION_FEATURES,
            allowed_lateness_s=30.0,
            events=decode_events(e.entity_id, payloads),
            profile=profile,  # type: ignore[arg-type]
        )
        assert history.add(e) is AddOutcome.ADDED
        online[e.event_id] = history.values_for(e).values
        history.prune()
        stored[e.entity_id] = ([encode_event(x) for x in history.events], history.profile)
    assert online.keys() == offline.keys()
    for event_id, vector in online.items():
        assert vector == offline[event_id]


@pytest.mark.parametrize("feature_set", [TRANSACTION_FEATURES, SMALL_SET], ids=lambda fs: fs.name)
def test_shared_window_evaluation_equals_each_feature_alone_bit_for_bit(feature_set) -> None:
    # Points between and on events, with empty windows and late events in the history.
    history = EntityHistory(feature_set, allowed_lateness_s=1e9)
    rng = random.Random(9)
    for e in random_events(4, entities=1, count=300):
        late = e if rng.random() > 0.1 else Event(e.event_id, e.entity_id, e.event_time - 30, e.fields)
        history.add(late)
    times = [e.event_time for e in history.events]
    points = times + [t + rng.uniform(0, 90) for t in times[::7]] + [times[0] - 1]
    for t in points:
        got = history.at(t)
        end = sum(1 for x in times if x <= t)
        if got is None:
            assert end == 0
            continue
        expected = []
        for feature in feature_set.features:
            start = 0
            if feature.window is not None:
                lower, inclusive = feature.window.start(t)
                start = sum(1 for x in times[:end] if (x < lower if inclusive else x <= lower))
            column = history._columns[feature.field]  # the history's per-field column, in order
            expected.append(aggregate(feature, column, times, start, end))
        assert repr(got.values) == repr(tuple(expected))


def test_event_encoding_is_deterministic_and_round_trips() -> None:
    e = event("x", 1_700_000_000.123456, 12.34, extra_field="y")
    assert encode_event(e) == encode_event(
        Event(e.event_id, e.entity_id, e.event_time, dict(reversed(e.fields.items())))
    )
    assert decode_events("c1", [encode_event(e)]) == [e]
