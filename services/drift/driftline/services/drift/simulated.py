"""Feature rows and a small fraud model from the transaction simulator, for tests and benchmarks.

The simulator emits raw transactions; the feature service turns them into the production
feature set. For drift experiments that do not need Kafka or Redis, :func:`simulate` computes a
few per-card features of the same kinds (numeric, counts, flags) directly, and
:class:`ToyModel` is a logistic regression trained on them that behaves like the champion: good
before the concept drift, wrong after it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from driftline.simulator import SimulatorConfig, TransactionSimulator

FEATURES = (
    "amount",
    "amount_ratio",
    "seconds_since_last",
    "txn_count_10s",
    "is_foreign",
    "risky_category",
    "online",
)
RISKY = frozenset(
    {"electronics", "jewelry", "gift_cards", "gambling", "crypto", "money_transfer", "luxury", "travel"}
)


@dataclass(frozen=True)
class SimulatedStream:
    features: np.ndarray
    labels: np.ndarray
    #: Event times, epoch seconds.
    times: np.ndarray
    event_ids: tuple[str, ...]
    card_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int, stop: int | None = None) -> SimulatedStream:
        return SimulatedStream(
            self.features[start:stop],
            self.labels[start:stop],
            self.times[start:stop],
            self.event_ids[start:stop],
            self.card_ids[start:stop],
        )


#: Weight of the newest amount in a card's moving average (stationary after a few events).
_EMA = 0.3


@dataclass
class _Card:
    country: str
    typical: float = math.nan
    last: float = math.nan
    recent: deque[float] | None = None


def simulate(config: SimulatorConfig, n: int, *, skip: int = 5000) -> SimulatedStream:
    """Features of events ``skip`` .. ``n`` (the first ``skip`` only warm up the per-card state).

    Features are stationary once every card has a few events behind it (``skip`` = 10 events per
    card with the default 500 cards), so that a stationary stream really is one.
    """
    cards: dict[str, _Card] = {}
    rows, labels, times, event_ids, card_ids = [], [], [], [], []
    for i, ev in enumerate(TransactionSimulator(config).events(n)):
        e = ev.event
        t = ev.event_time.timestamp()
        card = cards.get(ev.card_id)
        if card is None:
            card = cards[ev.card_id] = _Card(country=e["country"], recent=deque())
        amount = float(e["amount"])
        recent = card.recent
        assert recent is not None
        while recent and recent[0] <= t - 10.0:
            recent.popleft()
        row = (
            amount,
            amount / card.typical if math.isfinite(card.typical) else 1.0,
            min(t - card.last, 600.0) if math.isfinite(card.last) else 600.0,
            float(len(recent)),
            float(e["country"] != card.country),
            float(e["merchant_category"] in RISKY),
            float(e["channel"] == "online"),
        )
        card.typical = (
            amount if not math.isfinite(card.typical) else (1 - _EMA) * card.typical + _EMA * amount
        )
        card.last = t
        recent.append(t)
        if i >= skip:
            rows.append(row)
            labels.append(ev.label)
            times.append(t)
            event_ids.append(ev.event_id)
            card_ids.append(ev.card_id)
    return SimulatedStream(
        np.asarray(rows, dtype=float),
        np.asarray(labels, dtype=int),
        np.asarray(times, dtype=float),
        tuple(event_ids),
        tuple(card_ids),
    )


class ToyModel:
    """Logistic regression on log-scaled simulated features; ``score`` is P(fraud)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> None:
        self._model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
        self._model.fit(self._design(features), labels)

    @staticmethod
    def _design(features: np.ndarray) -> np.ndarray:
        x = np.array(features, dtype=float)
        x[:, 0] = np.log1p(x[:, 0])
        x[:, 1] = np.log(np.clip(x[:, 1], 1e-3, None))
        x[:, 2] = np.log1p(x[:, 2])
        return x

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict_proba(self._design(features))[:, 1])
