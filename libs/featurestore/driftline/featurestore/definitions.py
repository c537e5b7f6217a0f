"""Feature definitions, declared once in code and versioned as a feature set.

A :class:`FeatureSet` is the unit that is versioned, stored and served: its ``feature_names`` are
the model's input columns, in order. Changing a definition in a way that changes values means a
new ``version`` (new Redis keys, new offline partition), never an edit in place.

Window semantics, evaluated at a time ``t`` over the entity's events with ``event_time <= t``:

* ``sliding`` (length L): events with ``t - L < event_time <= t``;
* ``tumbling`` (length L): events in the current aligned window, ``floor(t / L) * L <= event_time``;
* ``hopping`` (length L, step S): the aligned window ``[k*S, k*S + L)`` that contains ``t`` and
  started first (the one that has seen the most), i.e. ``k = floor((t - L) / S) + 1``;
* no window: every event so far (``last`` and ``time_since_last`` usually take none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from driftline.kit.topics import TRANSACTIONS_CLEAN, Topic


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    #: Population standard deviation (ddof=0): one event gives 0.0.
    STD = "std"
    MIN = "min"
    MAX = "max"
    DISTINCT_COUNT = "distinct_count"
    #: Value of the newest event in the window.
    LAST = "last"
    #: Seconds between the newest event and the one before it (the field is ignored).
    TIME_SINCE_LAST = "time_since_last"


#: Aggregations whose input may be a string (anything hashable); the others need numbers.
CATEGORICAL_OK = frozenset({Aggregation.COUNT, Aggregation.DISTINCT_COUNT, Aggregation.TIME_SINCE_LAST})


class WindowType(StrEnum):
    TUMBLING = "tumbling"
    HOPPING = "hopping"
    SLIDING = "sliding"


@dataclass(frozen=True)
class Window:
    """An event-time window. ``step`` is only for hopping windows."""

    type: WindowType
    length: timedelta
    step: timedelta | None = None

    def __post_init__(self) -> None:
        if self.length <= timedelta(0):
            raise ValueError("window length must be positive")
        if self.type is WindowType.HOPPING:
            if self.step is None or self.step <= timedelta(0) or self.step > self.length:
                raise ValueError("a hopping window needs 0 < step <= length")
        elif self.step is not None:
            raise ValueError(f"a {self.type} window takes no step")

    @property
    def length_s(self) -> float:
        return self.length.total_seconds()

    @property
    def step_s(self) -> float:
        return self.step.total_seconds() if self.step is not None else self.length_s

    def start(self, t: float) -> tuple[float, bool]:
        """Lower bound of the window evaluated at ``t`` (epoch seconds), and whether it is inclusive."""
        length = self.length_s
        if self.type is WindowType.SLIDING:
            return t - length, False
        if self.type is WindowType.TUMBLING:
            return math.floor(t / length) * length, True
        step = self.step_s
        return (math.floor((t - length) / step) + 1) * step, True

    @classmethod
    def sliding(cls, length: timedelta) -> Window:
        return cls(WindowType.SLIDING, length)

    @classmethod
    def tumbling(cls, length: timedelta) -> Window:
        return cls(WindowType.TUMBLING, length)

    @classmethod
    def hopping(cls, length: timedelta, step: timedelta) -> Window:
        return cls(WindowType.HOPPING, length, step)


@dataclass(frozen=True)
class FeatureDefinition:
    """One feature: ``aggregation`` of ``field`` of ``source`` events per ``entity`` over ``window``.

    ``ttl``: a value older than this (now minus the event time of its newest event) is STALE and
    is never served as OK. ``default``: the value used when there is none (no event in the window,
    a MISSING value, or a STALE one under the DEFAULT policy); never NaN, models reject NaN.
    Every value is a float64, online and offline.
    """

    name: str
    entity: str
    source: Topic
    aggregation: Aggregation
    field: str
    window: Window | None
    ttl: timedelta
    default: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or "@" in self.name:
            raise ValueError(f"feature name {self.name!r} must be an identifier")
        if self.ttl <= timedelta(0):
            raise ValueError(f"feature {self.name}: ttl must be positive")
        if not math.isfinite(self.default):
            raise ValueError(f"feature {self.name}: default must be finite")

    @property
    def ttl_s(self) -> float:
        return self.ttl.total_seconds()


#: A derived field: computed per event from its fields and the entity's profile (first-seen values).
DerivedField = Callable[[Mapping[str, Any], Mapping[str, Any]], float]


@dataclass(frozen=True)
class FeatureSet:
    """A versioned, ordered group of features over one entity and one source topic.

    ``profile_fields``: event fields whose first-seen value (earliest event time) the engine keeps
    per entity, for derived fields such as "country differs from the home country".
    ``derived``: extra per-event fields computed from the event's fields and that profile.
    """

    name: str
    version: int
    entity: str
    source: Topic
    features: tuple[FeatureDefinition, ...]
    profile_fields: tuple[str, ...] = ()
    derived: Mapping[str, DerivedField] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"feature set name {self.name!r} must be alphanumeric/underscore")
        if self.version < 1:
            raise ValueError("feature set versions start at 1")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {self.name}")
        if not names:
            raise ValueError(f"feature set {self.name} has no features")
        for feature in self.features:
            if feature.entity != self.entity or feature.source.name != self.source.name:
                raise ValueError(f"feature {feature.name}: entity and source must match the feature set's")

    @property
    def feature_names(self) -> list[str]:
        """Model input columns, in order."""
        return [f.name for f in self.features]

    @property
    def key(self) -> str:
        """``name.vVERSION``: how stores name this feature set."""
        return f"{self.name}.v{self.version}"

    def feature(self, name: str) -> FeatureDefinition:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def defaults(self) -> list[float]:
        return [f.default for f in self.features]

    @property
    def max_window_s(self) -> float:
        """Longest look-back any windowed feature needs."""
        return max((f.window.length_s for f in self.features if f.window is not None), default=0.0)

    def retention_s(self, allowed_lateness_s: float = 0.0) -> float:
        """How far behind the newest event an entity's buffered events must be kept."""
        return self.max_window_s + allowed_lateness_s


# --- the default feature set ------------------------------------------------------------------

#: Merchant categories that card fraud favours; matched case-insensitively.
RISKY_CATEGORIES = frozenset(
    {"electronics", "jewelry", "gift_cards", "gambling", "crypto", "money_transfer", "luxury", "travel"}
)


def _is_foreign(fields: Mapping[str, Any], profile: Mapping[str, Any]) -> float:
    home = profile.get("country")
    return 0.0 if home is None else float(fields.get("country") != home)


def _is_risky_category(fields: Mapping[str, Any], _profile: Mapping[str, Any]) -> float:
    return float(str(fields.get("merchant_category", "")).lower() in RISKY_CATEGORIES)


def _card_feature(
    name: str,
    aggregation: Aggregation,
    field_name: str,
    window: Window | None,
    ttl: timedelta,
    *,
    default: float = 0.0,
    description: str,
) -> FeatureDefinition:
    return FeatureDefinition(
        name=name,
        entity="card_id",
        source=TRANSACTIONS_CLEAN,
        aggregation=aggregation,
        field=field_name,
        window=window,
        ttl=ttl,
        default=default,
        description=description,
    )


_S = timedelta(seconds=1)
_M = timedelta(minutes=1)

# Windows sized for the demo: ~100-300 events/s over ~500 cards is one event every 2-5 s per card,
# so velocity needs windows of seconds and "typical behaviour" needs minutes.
TRANSACTION_FEATURES = FeatureSet(
    name="card_transactions",
    version=1,
    entity="card_id",
    source=TRANSACTIONS_CLEAN,
    profile_fields=("country",),
    derived={"is_foreign": _is_foreign, "is_risky_category": _is_risky_category},
    description="Per-card spending, velocity and location features for fraud scoring.",
    features=(
        _card_feature(
            "amount",
            Aggregation.LAST,
            "amount",
            None,
            10 * _M,
            description="Amount of the newest transaction.",
        ),
        _card_feature(
            "amount_mean_10m",
            Aggregation.MEAN,
            "amount",
            Window.sliding(10 * _M),
            10 * _M,
            description="Mean amount over the last 10 minutes (the card's typical spend).",
        ),
        _card_feature(
            "amount_std_10m",
            Aggregation.STD,
            "amount",
            Window.sliding(10 * _M),
            10 * _M,
            description="Population standard deviation of the amount over the last 10 minutes.",
        ),
        _card_feature(
            "amount_max_10m",
            Aggregation.MAX,
            "amount",
            Window.sliding(10 * _M),
            10 * _M,
            description="Largest amount over the last 10 minutes.",
        ),
        _card_feature(
            "txn_count_10s",
            Aggregation.COUNT,
            "event_id",
            Window.sliding(10 * _S),
            2 * _M,
            description="Transactions in the last 10 seconds (bursts).",
        ),
        _card_feature(
            "txn_count_1m",
            Aggregation.COUNT,
            "event_id",
            Window.hopping(_M, 10 * _S),
            2 * _M,
            description="Transactions in the 1-minute hopping window (10 s step) holding now.",
        ),
        _card_feature(
            "amount_sum_1m",
            Aggregation.SUM,
            "amount",
            Window.tumbling(_M),
            2 * _M,
            description="Amount spent in the current aligned minute (tumbling window).",
        ),
        _card_feature(
            "seconds_since_last",
            Aggregation.TIME_SINCE_LAST,
            "event_id",
            None,
            10 * _M,
            default=600.0,
            description="Seconds since the card's previous transaction (600 for its first).",
        ),
        _card_feature(
            "distinct_merchants_10m",
            Aggregation.DISTINCT_COUNT,
            "merchant_id",
            Window.sliding(10 * _M),
            10 * _M,
            description="Distinct merchants over the last 10 minutes.",
        ),
        _card_feature(
            "is_foreign",
            Aggregation.LAST,
            "is_foreign",
            None,
            10 * _M,
            description="1 when the newest transaction's country differs from the card's first-seen one.",
        ),
        _card_feature(
            "foreign_ratio_10m",
            Aggregation.MEAN,
            "is_foreign",
            Window.sliding(10 * _M),
            10 * _M,
            description="Share of the last 10 minutes' transactions made abroad.",
        ),
        _card_feature(
            "risky_category",
            Aggregation.LAST,
            "is_risky_category",
            None,
            10 * _M,
            description="1 when the newest transaction's merchant category is a risky one.",
        ),
    ),
)

FEATURE_SETS: tuple[FeatureSet, ...] = (TRANSACTION_FEATURES,)


def feature_set_by_key(key: str) -> FeatureSet:
    """The declared feature set named ``name.vN``."""
    for feature_set in FEATURE_SETS:
        if feature_set.key == key:
            return feature_set
    raise LookupError(f"undeclared feature set {key!r}")


def declared_feature_set(name: str, version: int) -> FeatureSet | None:
    """The declared feature set of this name and version (as a model version records them), if any."""
    for feature_set in FEATURE_SETS:
        if (feature_set.name, feature_set.version) == (name, version):
            return feature_set
    return None
