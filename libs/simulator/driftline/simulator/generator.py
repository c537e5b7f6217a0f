"""A deterministic synthetic card-transaction stream with ground truth and injectable drift.

The generative model, which per-card windowed features (last amount, amount mean/std/max over a
window, transaction counts over seconds, distinct merchants, seconds since the last transaction,
foreign country, risky category) can learn:

* every card has a home country and billing currency, a typical amount (lognormal across cards)
  and a few preferred home-country merchants; legitimate transactions are mostly at those, near
  the typical amount, card-present, and a card's legitimate transactions are ``n_cards *
  mean_gap_s`` seconds apart on average (25 s with the defaults);
* fraud comes in bursts on one card. Before the concept drift a burst is 2-6 transactions a few
  seconds apart, 3-12x the typical amount, mostly abroad, mostly at risky merchant categories,
  mostly online;
* from ``concept_drift_at`` new bursts are 5-10 small transactions (0.05-0.3x typical) at
  everyday home-country merchants, under two seconds apart; meanwhile one legitimate transaction
  in ten becomes travel spending: large, foreign, at travel and luxury merchants. A model trained
  before the drift misses the new fraud and flags the travellers;
* from ``covariate_drift_at`` the inputs shift with the fraud concept unchanged: every amount is
  2.5x, legitimate foreign spending is 5x as common and online spending 3x as common.

Fraud is ``fraud_rate`` of the events on average: a background arrival process of rate
``lambda`` starts a burst with probability ``q``, chosen so that both the fraud share and the
mean gap between consecutive events (``mean_gap_s``) hold whatever the burst length.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from driftline.simulator.world import ALL_COUNTRIES, Card, Merchant, World, build_world

#: The data-contract version of the events this simulator emits.
CONTRACT_VERSION = "1"

_COVARIATE_AMOUNT_FACTOR = 2.5
_FOREIGN_SHARE = 0.03
_FOREIGN_SHARE_DRIFTED = 0.15
_ONLINE_SHARE = 0.15
_ONLINE_SHARE_DRIFTED = 0.45
_TRAVEL_SHARE_AFTER_CONCEPT_DRIFT = 0.10


@dataclass(frozen=True)
class SimulatorConfig:
    """What to simulate. The same config always yields the same events.

    ``start`` is the event time of the stream's beginning: pass ``datetime.now(UTC)`` for live
    traffic (the ingestion contract rejects events older than its sanity window).
    """

    seed: int = 7
    n_cards: int = 500
    fraud_rate: float = 0.03
    start: datetime = field(default_factory=lambda: datetime(2025, 1, 1, tzinfo=UTC))
    #: Mean event-time gap between consecutive events, across all cards.
    mean_gap_s: float = 0.05
    #: Event index from which the input distribution shifts (fraud concept unchanged).
    covariate_drift_at: int | None = None
    #: Event index from which new fraud bursts follow the new pattern.
    concept_drift_at: int | None = None
    #: Feedback arrives this long after the event, in event time, jittered by +-50%.
    label_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.n_cards < 1:
            raise ValueError("n_cards must be at least 1")
        if not 0.0 <= self.fraud_rate < 1.0:
            raise ValueError("fraud_rate must be in [0, 1)")
        if not (math.isfinite(self.mean_gap_s) and self.mean_gap_s > 0):
            raise ValueError("mean_gap_s must be positive")
        if not (math.isfinite(self.label_delay_s) and self.label_delay_s >= 0):
            raise ValueError("label_delay_s must be >= 0")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        for name in ("covariate_drift_at", "concept_drift_at"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class SimEvent:
    """One simulated transaction and its ground truth."""

    index: int
    #: The raw transaction as a producer sends it: JSON-able, exactly per the data contract.
    event: dict[str, Any]
    #: 1 for fraud, 0 for legitimate.
    label: int
    #: When the label becomes known (event time plus the jittered label delay).
    label_time: datetime
    event_time: datetime

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])

    @property
    def card_id(self) -> str:
        return str(self.event["card_id"])


@dataclass(frozen=True)
class _Pattern:
    """How one kind of fraud burst looks."""

    name: str
    min_len: int
    max_len: int
    min_gap_s: float
    max_gap_s: float

    @property
    def mean_len(self) -> float:
        return (self.min_len + self.max_len) / 2


_CLASSIC = _Pattern("classic", 2, 6, 0.5, 4.0)
_VELOCITY = _Pattern("velocity", 5, 10, 0.2, 1.5)


@dataclass
class _Burst:
    card: Card
    pattern: _Pattern
    country: str
    covariate: bool


class TransactionSimulator:
    """Generates a deterministic stream of :class:`SimEvent` for one :class:`SimulatorConfig`."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.world: World = build_world(random.Random(self.config.seed * 7919 + 1), self.config.n_cards)
        digest = hashlib.sha256(f"{self.config.seed}|{self.config.start.isoformat()}".encode()).hexdigest()
        #: Event ids are ``ev-<run>-<index>``: the same config gives the same ids, another seed or
        #: start gives ids that never collide with these (so de-duplication keeps both runs).
        self.run_id = digest[:10]

    def events(self, n: int) -> Iterator[SimEvent]:
        """The first ``n`` events of the stream (every call starts from the beginning)."""
        return _Run(self).take(n)


class _Run:
    """The mutable state of one pass over the stream."""

    def __init__(self, sim: TransactionSimulator) -> None:
        self.config = sim.config
        self.world = sim.world
        self.run_id = sim.run_id
        self.rng = random.Random(self.config.seed)
        self.index = 0
        self.background_t = 0.0
        #: (event time, tie-breaking sequence, burst) of the fraud events still to come.
        self.scheduled: list[tuple[float, int, _Burst]] = []
        self.sequence = 0
        self.total_weight = self.world.card_cum_weights[-1]

    def _drifted(self, at: int | None) -> bool:
        return at is not None and self.index >= at

    def _pattern(self) -> _Pattern:
        return _VELOCITY if self._drifted(self.config.concept_drift_at) else _CLASSIC

    def _arrival(self, pattern: _Pattern) -> tuple[float, float]:
        """Burst-start probability and background arrival rate that keep both targets."""
        f = self.config.fraud_rate
        q = f / (pattern.mean_len * (1 - f) + f)
        rate = 1.0 / (self.config.mean_gap_s * (1 - q + q * pattern.mean_len))
        return q, rate

    def take(self, n: int) -> Iterator[SimEvent]:
        pattern = self._pattern()
        q, rate = self._arrival(pattern)
        self.background_t = self.rng.expovariate(rate)
        while self.index < n:
            if self.scheduled and self.scheduled[0][0] <= self.background_t:
                t, _, burst = heapq.heappop(self.scheduled)
                yield self._fraud(t, burst)
            else:
                t = self.background_t
                if self.rng.random() < q:
                    yield self._start_burst(t, pattern)
                else:
                    yield self._legit(t, self._card())
                if pattern is not self._pattern():
                    pattern = self._pattern()
                    q, rate = self._arrival(pattern)
                self.background_t = t + self.rng.expovariate(rate)

    def _card(self) -> Card:
        x = self.rng.random() * self.total_weight
        return self.world.cards[bisect_left(self.world.card_cum_weights, x)]

    def _foreign_country(self, card: Card) -> str:
        while True:
            country = self.rng.choice(ALL_COUNTRIES)
            if country != card.home_country:
                return country

    def _start_burst(self, t: float, pattern: _Pattern) -> SimEvent:
        card = self._card()
        if pattern is _CLASSIC:
            country = self._foreign_country(card) if self.rng.random() < 0.85 else card.home_country
        else:
            country = card.home_country
        burst = _Burst(card, pattern, country, self._drifted(self.config.covariate_drift_at))
        length = self.rng.randint(pattern.min_len, pattern.max_len)
        at = t
        for _ in range(length - 1):
            at += self.rng.uniform(pattern.min_gap_s, pattern.max_gap_s)
            self.sequence += 1
            heapq.heappush(self.scheduled, (at, self.sequence, burst))
        return self._fraud(t, burst)

    def _fraud(self, t: float, burst: _Burst) -> SimEvent:
        rng = self.rng
        card = burst.card
        if burst.pattern is _CLASSIC:
            kind = "risky" if rng.random() < 0.75 else "everyday"
            merchant = self.world.merchant(rng, burst.country, kind)
            amount = card.typical_amount * rng.uniform(3.0, 12.0)
            channel = "online" if rng.random() < 0.7 else "pos"
        else:
            merchant = self.world.merchant(rng, burst.country, "everyday")
            amount = card.typical_amount * rng.uniform(0.05, 0.3)
            r = rng.random()
            channel = "contactless" if r < 0.6 else ("pos" if r < 0.8 else "online")
        if burst.covariate or self._drifted(self.config.covariate_drift_at):
            amount *= _COVARIATE_AMOUNT_FACTOR
        return self._emit(t, card, merchant, amount, channel, label=1)

    def _legit(self, t: float, card: Card) -> SimEvent:
        rng = self.rng
        covariate = self._drifted(self.config.covariate_drift_at)
        foreign_share = _FOREIGN_SHARE_DRIFTED if covariate else _FOREIGN_SHARE
        online_share = _ONLINE_SHARE_DRIFTED if covariate else _ONLINE_SHARE
        if self._drifted(self.config.concept_drift_at) and rng.random() < _TRAVEL_SHARE_AFTER_CONCEPT_DRIFT:
            # Travel: large, foreign, at merchants the old fraud pattern favoured, yet legitimate.
            country = self._foreign_country(card)
            merchant = self.world.merchant(rng, country, "travel" if rng.random() < 0.6 else "risky")
            amount = card.typical_amount * rng.uniform(3.0, 12.0)
        elif rng.random() < foreign_share:
            country = self._foreign_country(card)
            merchant = self.world.merchant(rng, country, "travel" if rng.random() < 0.3 else "everyday")
            amount = card.typical_amount * rng.lognormvariate(0.2, 0.5)
        else:
            r = rng.random()
            if r < 0.8:
                merchant = rng.choice(card.preferred)
            elif r < 0.97:
                merchant = self.world.merchant(rng, card.home_country, "everyday")
            else:
                merchant = self.world.merchant(rng, card.home_country, "risky")
            amount = card.typical_amount * rng.lognormvariate(0.0, 0.4)
        if rng.random() < online_share:
            channel = "online"
        else:
            r = rng.random()
            channel = "contactless" if r < 0.55 else ("pos" if r < 0.95 else "atm")
        if covariate:
            amount *= _COVARIATE_AMOUNT_FACTOR
        return self._emit(t, card, merchant, amount, channel, label=0)

    def _emit(
        self, t: float, card: Card, merchant: Merchant, amount: float, channel: str, label: int
    ) -> SimEvent:
        start = self.config.start
        event_time = start + timedelta(microseconds=round(t * 1e6))
        delay = self.config.label_delay_s * self.rng.uniform(0.5, 1.5)
        label_time = event_time + timedelta(microseconds=round(delay * 1e6))
        index = self.index
        self.index += 1
        event = {
            "event_id": f"ev-{self.run_id}-{index:09d}",
            "card_id": card.card_id,
            "merchant_id": merchant.merchant_id,
            "amount": round(min(max(amount, 0.01), 999_999.0), 2),
            "currency": card.currency,
            "merchant_category": merchant.category,
            "country": merchant.country,
            "channel": channel,
            "event_time": rfc3339(event_time),
            "contract_version": CONTRACT_VERSION,
        }
        return SimEvent(index=index, event=event, label=label, label_time=label_time, event_time=event_time)


def rfc3339(moment: datetime) -> str:
    """``2025-01-01T00:00:00.123456Z``: UTC, microseconds, the form the contract's examples use."""
    # isoformat is several times faster than strftime; drop the zone and write "Z" instead.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
