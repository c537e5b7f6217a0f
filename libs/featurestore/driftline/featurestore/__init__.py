"""Driftline's feature store: feature definitions, one aggregation engine, online and offline stores.

* :mod:`~driftline.featurestore.definitions`: features declared once, versioned as feature sets
  (``TRANSACTION_FEATURES``);
* :mod:`~driftline.featurestore.aggregation`: the engine both the stream and the offline builder use;
* :mod:`~driftline.featurestore.online`: Redis online store (sync and asyncio);
* :mod:`~driftline.featurestore.offline`: Parquet offline store and point-in-time training sets.
"""

from driftline.featurestore.aggregation import AddOutcome, Computed, EntityHistory, Profile, replay
from driftline.featurestore.definitions import (
    FEATURE_SETS,
    TRANSACTION_FEATURES,
    Aggregation,
    FeatureDefinition,
    FeatureSet,
    Window,
    WindowType,
    feature_set_by_key,
)
from driftline.featurestore.events import (
    Event,
    epoch_seconds,
    transaction_event,
    transaction_event_from_mapping,
    transaction_events_from_frame,
)
from driftline.featurestore.offline import (
    FeatureRow,
    OfflineStore,
    build_training_set_from_events,
    materialize,
    point_in_time_join,
    training_set_hash,
)
from driftline.featurestore.online import AsyncOnlineStore, FeatureWrite, OnlineStore
from driftline.featurestore.vectors import (
    EntityFeatures,
    FeatureFrame,
    FeatureStatus,
    FeaturesUnavailable,
    FeatureValue,
    StalenessPolicy,
    computed_to_proto,
    entity_features_from_proto,
)

__all__ = [
    "FEATURE_SETS",
    "TRANSACTION_FEATURES",
    "AddOutcome",
    "Aggregation",
    "AsyncOnlineStore",
    "Computed",
    "EntityFeatures",
    "EntityHistory",
    "Event",
    "FeatureDefinition",
    "FeatureFrame",
    "FeatureRow",
    "FeatureSet",
    "FeatureStatus",
    "FeatureValue",
    "FeatureWrite",
    "FeaturesUnavailable",
    "OfflineStore",
    "OnlineStore",
    "Profile",
    "StalenessPolicy",
    "Window",
    "WindowType",
    "build_training_set_from_events",
    "computed_to_proto",
    "entity_features_from_proto",
    "epoch_seconds",
    "feature_set_by_key",
    "materialize",
    "point_in_time_join",
    "replay",
    "training_set_hash",
    "transaction_event",
    "transaction_event_from_mapping",
    "transaction_events_from_frame",
]
