"""The simulated world: countries, merchants and cards, drawn once per seed."""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate

#: Home countries of cards: (ISO 3166-1 alpha-2, ISO 4217 billing currency, share of cards).
HOME_COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "USD", 0.40),
    ("GB", "GBP", 0.15),
    ("DE", "EUR", 0.10),
    ("FR", "EUR", 0.10),
    ("ES", "EUR", 0.05),
    ("IT", "EUR", 0.05),
    ("NL", "EUR", 0.05),
    ("CA", "CAD", 0.05),
    ("AU", "AUD", 0.05),
)
#: Countries that only ever appear as the merchant's country of a foreign transaction.
DESTINATION_COUNTRIES: tuple[str, ...] = (
    "BR",
    "MX",
    "NG",
    "TH",
    "TR",
    "AE",
    "ID",
    "PH",
    "JP",
    "SG",
    "ZA",
    "AR",
)
ALL_COUNTRIES: tuple[str, ...] = tuple(c for c, _, _ in HOME_COUNTRIES) + DESTINATION_COUNTRIES

#: Everyday spending; the bulk of legitimate transactions.
EVERYDAY_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurant",
    "fuel",
    "retail",
    "transport",
    "pharmacy",
    "utilities",
    "entertainment",
)
#: Categories that card fraud favours before the concept drift.
RISKY_CATEGORIES: tuple[str, ...] = (
    "electronics",
    "jewelry",
    "gift_cards",
    "gambling",
    "crypto",
    "money_transfer",
    "luxury",
)
TRAVEL_CATEGORIES: tuple[str, ...] = ("travel",)
#: Every category the simulator emits (the data contract's enum holds all of them).
MERCHANT_CATEGORIES: tuple[str, ...] = EVERYDAY_CATEGORIES + RISKY_CATEGORIES + TRAVEL_CATEGORIES
CHANNELS: tuple[str, ...] = ("pos", "contactless", "online", "atm")

_MERCHANTS_PER_COUNTRY = {"everyday": 60, "risky": 15, "travel": 8}


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    category: str
    country: str


@dataclass(frozen=True)
class Card:
    card_id: str
    home_country: str
    currency: str
    #: Median amount of the card's everyday transactions (lognormal across cards).
    typical_amount: float
    #: Home-country everyday merchants the card returns to.
    preferred: tuple[Merchant, ...]


@dataclass(frozen=True)
class World:
    cards: tuple[Card, ...]
    #: Cumulative activity weights of ``cards``, for weighted choice by bisection.
    card_cum_weights: tuple[float, ...]
    #: merchants[(country, kind)] with kind "everyday", "risky" or "travel".
    merchants: dict[tuple[str, str], tuple[Merchant, ...]]

    def merchant(self, rng: random.Random, country: str, kind: str) -> Merchant:
        return rng.choice(self.merchants[(country, kind)])


def build_world(rng: random.Random, n_cards: int) -> World:
    merchants: dict[tuple[str, str], tuple[Merchant, ...]] = {}
    categories = {"everyday": EVERYDAY_CATEGORIES, "risky": RISKY_CATEGORIES, "travel": TRAVEL_CATEGORIES}
    for country in ALL_COUNTRIES:
        for kind, count in _MERCHANTS_PER_COUNTRY.items():
            merchants[(country, kind)] = tuple(
                Merchant(
                    merchant_id=f"m-{country.lower()}-{kind[0]}{i:03d}",
                    category=rng.choice(categories[kind]),
                    country=country,
                )
                for i in range(count)
            )
    homes = [(c, cur) for c, cur, _ in HOME_COUNTRIES]
    home_weights = [w for _, _, w in HOME_COUNTRIES]
    cards = []
    weights = []
    for i in range(n_cards):
        country, currency = rng.choices(homes, weights=home_weights)[0]
        preferred = tuple(rng.sample(merchants[(country, "everyday")], rng.randint(3, 8)))
        cards.append(
            Card(
                card_id=f"card-{i:06d}",
                home_country=country,
                currency=currency,
                typical_amount=rng.lognormvariate(3.4, 0.7),
                preferred=preferred,
            )
        )
        # Mildly uneven activity: every card stays in the same order of magnitude of velocity.
        weights.append(rng.uniform(0.5, 1.5))
    return World(cards=tuple(cards), card_cum_weights=tuple(accumulate(weights)), merchants=merchants)
