"""Ingestion's Prometheus metrics: the accounting identity and the data-quality gauges.

consumed = clean + dead-lettered (all reasons) + duplicates, counted once per message when its
batch's outputs are acknowledged (so a retried batch is not counted twice).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from driftline.services.ingestion.quality import FieldQuality


class IngestionMetrics:
    """The metric families, registered in ``registry`` (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.consumed = Counter(
            "driftline_ingestion_consumed_total",
            "Raw messages whose outcome was delivered.",
            registry=registry,
        )
        self.clean = Counter(
            "driftline_ingestion_clean_total", "Messages published as clean transactions.", registry=registry
        )
        self.dead_lettered = Counter(
            "driftline_ingestion_dead_lettered_total",
            "Messages sent to the dead-letter topic, by reason code.",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "driftline_ingestion_duplicates_total",
            "Valid messages dropped because their event id was seen within the horizon.",
            registry=registry,
        )
        self.null_ratio = Gauge(
            "driftline_ingestion_field_null_ratio",
            "Share of recent decoded events where the field is missing or null.",
            ["field"],
            registry=registry,
        )
        self.invalid_ratio = Gauge(
            "driftline_ingestion_field_invalid_ratio",
            "Share of recent decoded events where the field has the wrong type or format.",
            ["field"],
            registry=registry,
        )
        self.out_of_range_ratio = Gauge(
            "driftline_ingestion_field_out_of_range_ratio",
            "Share of recent decoded events where the field's value breaks a range, enum, length, "
            "pattern or event-time rule.",
            ["field"],
            registry=registry,
        )
        self.quality_window_events = Gauge(
            "driftline_ingestion_quality_window_events",
            "Decoded events the data-quality ratios cover.",
            registry=registry,
        )

    def set_quality(self, snapshot: dict[str, FieldQuality], events: int) -> None:
        for name, quality in snapshot.items():
            self.null_ratio.labels(name).set(quality.null_rate)
            self.invalid_ratio.labels(name).set(quality.invalid_rate)
            self.out_of_range_ratio.labels(name).set(quality.out_of_range_rate)
        self.quality_window_events.set(events)
