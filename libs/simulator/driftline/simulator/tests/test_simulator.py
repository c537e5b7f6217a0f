from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from driftline.simulator import (
    CHANNELS,
    MERCHANT_CATEGORIES,
    SimEvent,
    SimulatorConfig,
    TransactionSimulator,
    feedback_label,
)

N = 30_000


def _events(**kwargs: object) -> list[SimEvent]:
    n = int(kwargs.pop("n", N))  # type: ignore[call-overload]
    return list(TransactionSimulator(SimulatorConfig(**kwargs)).events(n))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stationary() -> list[SimEvent]:
    return _events()


def _home(events: list[SimEvent]) -> dict[str, str]:
    """Each card's most frequent country (its home)."""
    seen: dict[str, dict[str, int]] = {}
    for ev in events:
        counts = seen.setdefault(ev.card_id, {})
        counts[ev.event["country"]] = counts.get(ev.event["country"], 0) + 1
    return {card: max(c, key=c.__getitem__) for card, c in seen.items()}


def test_same_seed_gives_the_same_stream(stationary: list[SimEvent]) -> None:
    again = _events(n=5_000)
    assert again == stationary[:5_000]


def test_another_seed_gives_another_stream_with_other_event_ids(stationary: list[SimEvent]) -> None:
    other = _events(n=1_000, seed=8)
    assert [e.event for e in other] != [e.event for e in stationary[:1_000]]
    assert not {e.event_id for e in other} & {e.event_id for e in stationary}


def test_events_before_a_drift_point_do_not_depend_on_the_drift(stationary: list[SimEvent]) -> None:
    drifted = _events(n=12_000, covariate_drift_at=10_000, concept_drift_at=10_000)
    assert drifted[:10_000] == stationary[:10_000]
    assert [e.event for e in drifted[10_000:]] != [e.event for e in stationary[10_000:12_000]]


def test_events_follow_the_data_contract_shape(stationary: list[SimEvent]) -> None:
    ids = set()
    for ev in stationary:
        e = ev.event
        assert set(e) == {
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
        }
        assert e["contract_version"] == "1"
        assert 0 < e["amount"] < 1_000_000
        assert math.isfinite(e["amount"])
        assert e["merchant_category"] in MERCHANT_CATEGORIES
        assert e["channel"] in CHANNELS
        assert re.fullmatch("[A-Z]{2}", e["country"])
        assert re.fullmatch("[A-Z]{3}", e["currency"])
        assert datetime.fromisoformat(e["event_time"]) == ev.event_time
        assert ev.label in (0, 1)
        assert ev.label_time >= ev.event_time
        ids.add(ev.event_id)
        json.dumps(e, allow_nan=False)
    assert len(ids) == len(stationary)
    assert [ev.index for ev in stationary] == list(range(len(stationary)))


def test_event_time_never_goes_back_and_gaps_average_the_configured_mean(stationary: list[SimEvent]) -> None:
    times = [ev.event_time for ev in stationary]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert times[0] >= SimulatorConfig().start
    mean_gap = (times[-1] - times[0]).total_seconds() / (len(times) - 1)
    assert mean_gap == pytest.approx(0.05, rel=0.05)


def test_labels_arrive_after_the_configured_delay_with_jitter(stationary: list[SimEvent]) -> None:
    delays = [(ev.label_time - ev.event_time).total_seconds() for ev in stationary]
    assert min(delays) >= 2.5 - 1e-6
    assert max(delays) <= 7.5 + 1e-6
    assert statistics.mean(delays) == pytest.approx(5.0, rel=0.05)
    assert statistics.pstdev(delays) > 0.5


@pytest.mark.parametrize("rate", [0.03, 0.1])
def test_fraud_share_matches_the_configured_rate(rate: float) -> None:
    events = _events(n=40_000, fraud_rate=rate)
    share = sum(ev.label for ev in events) / len(events)
    assert share == pytest.approx(rate, rel=0.2)


def test_zero_fraud_rate_gives_no_fraud() -> None:
    assert sum(ev.label for ev in _events(n=5_000, fraud_rate=0.0)) == 0


def test_fraud_comes_in_bursts_that_are_large_foreign_and_risky(stationary: list[SimEvent]) -> None:
    home = _home(stationary)
    last_time: dict[str, datetime] = {}
    gaps: dict[int, list[float]] = {0: [], 1: []}
    ratio: dict[int, list[float]] = {0: [], 1: []}
    foreign: dict[int, list[bool]] = {0: [], 1: []}
    risky: dict[int, list[bool]] = {0: [], 1: []}
    legit_amounts: dict[str, list[float]] = {}
    for ev in stationary:
        if ev.label == 0:
            legit_amounts.setdefault(ev.card_id, []).append(ev.event["amount"])
    typical = {card: statistics.median(a) for card, a in legit_amounts.items()}
    for ev in stationary:
        card = ev.card_id
        if card in last_time:
            gaps[ev.label].append((ev.event_time - last_time[card]).total_seconds())
        last_time[card] = ev.event_time
        ratio[ev.label].append(ev.event["amount"] / typical.get(card, ev.event["amount"]))
        foreign[ev.label].append(ev.event["country"] != home[card])
        risky[ev.label].append(
            ev.event["merchant_category"]
            in {"electronics", "jewelry", "gift_cards", "gambling", "crypto", "money_transfer", "luxury"}
        )
    assert statistics.median(gaps[1]) < 5 < 15 < statistics.median(gaps[0])
    assert statistics.median(ratio[1]) > 3 * statistics.median(ratio[0])
    assert statistics.mean(foreign[1]) > 0.6 > 0.1 > statistics.mean(foreign[0])
    assert statistics.mean(risky[1]) > 0.5 > 0.1 > statistics.mean(risky[0])


def test_covariate_drift_shifts_amounts_foreign_and_online_shares() -> None:
    events = _events(n=40_000, covariate_drift_at=20_000)
    before, after = events[:20_000], events[20_000:]

    def median_amount(evs: list[SimEvent]) -> float:
        return statistics.median(ev.event["amount"] for ev in evs)

    def online(evs: list[SimEvent]) -> float:
        return statistics.mean(ev.event["channel"] == "online" for ev in evs)

    home = _home(before)

    def foreign(evs: list[SimEvent]) -> float:
        return statistics.mean(ev.event["country"] != home.get(ev.card_id) for ev in evs if ev.label == 0)

    assert median_amount(after) == pytest.approx(2.5 * median_amount(before), rel=0.1)
    assert online(after) > 2 * online(before)
    assert foreign(after) > 3 * foreign(before)
    # The fraud concept is unchanged: about the same share, still large relative amounts abroad.
    fraud_before = sum(e.label for e in before) / len(before)
    fraud_after = sum(e.label for e in after) / len(after)
    assert fraud_after == pytest.approx(fraud_before, rel=0.3)


def test_concept_drift_changes_what_fraud_looks_like() -> None:
    events = _events(n=40_000, concept_drift_at=20_000)
    # Bursts started before the change point may straddle it: compare well clear of it.
    before, after = events[:20_000], events[21_000:]
    home = _home(before)

    def fraud(evs: list[SimEvent]) -> list[SimEvent]:
        return [e for e in evs if e.label == 1]

    def legit(evs: list[SimEvent]) -> list[SimEvent]:
        return [e for e in evs if e.label == 0]

    def foreign_share(evs: list[SimEvent]) -> float:
        return statistics.mean(e.event["country"] != home.get(e.card_id) for e in evs)

    # Fraud moves home and gets small; legitimate spending abroad grows.
    assert foreign_share(fraud(before)) > 0.6
    assert foreign_share(fraud(after)) < 0.1
    assert statistics.median(e.event["amount"] for e in fraud(after)) < 0.3 * statistics.median(
        e.event["amount"] for e in fraud(before)
    )
    assert foreign_share(legit(after)) > 2 * foreign_share(legit(before))
    # A pre-drift rule ("large and foreign is fraud") loses most of its precision and recall.

    def rule(e: SimEvent) -> int:
        return int(e.event["country"] != home.get(e.card_id) and e.event["amount"] > 60)

    def accuracy_on_fraud(evs: list[SimEvent]) -> float:
        return statistics.mean(rule(e) == e.label for e in fraud(evs))

    assert accuracy_on_fraud(before) > 0.5
    assert accuracy_on_fraud(after) < 0.1
    fraud_share = sum(e.label for e in after) / len(after)
    assert fraud_share == pytest.approx(0.03, rel=0.3)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(n_cards=0)
    with pytest.raises(ValueError):
        SimulatorConfig(fraud_rate=1.0)
    with pytest.raises(ValueError):
        SimulatorConfig(mean_gap_s=0)
    with pytest.raises(ValueError):
        SimulatorConfig(start=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        SimulatorConfig(concept_drift_at=-1)


def test_start_sets_event_times() -> None:
    start = datetime(2030, 6, 1, 12, tzinfo=UTC)
    events = _events(n=100, start=start, mean_gap_s=1.0)
    assert start <= events[0].event_time < start + timedelta(seconds=30)
    assert events[-1].event_time > start + timedelta(seconds=50)


def test_feedback_label_names_the_card_and_event(stationary: list[SimEvent]) -> None:
    ev = next(e for e in stationary if e.label == 1)
    fb = feedback_label(ev)
    assert fb.entity_id == ev.card_id
    assert fb.event_id == ev.event_id
    assert fb.label == 1
    assert fb.label_time.ToDatetime(tzinfo=UTC) == ev.label_time
    assert fb.event_time.ToDatetime(tzinfo=UTC) == ev.event_time
    assert fb.feedback_id == feedback_label(ev).feedback_id
