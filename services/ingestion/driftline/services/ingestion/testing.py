"""Test helpers shared by ingestion's unit tests (importable, never run)."""

from __future__ import annotations

from typing import Any


def valid_event(**changes: Any) -> dict[str, Any]:
    """A canonical transaction that satisfies contract v1 at 2025-06-01 12:00 UTC, with ``changes``."""
    return {
        "event_id": "ev-1",
        "card_id": "card-1",
        "merchant_id": "m-1",
        "amount": 10.0,
        "currency": "EUR",
        "merchant_category": "travel",
        "country": "FR",
        "channel": "online",
        "event_time": "2025-06-01T11:00:00Z",
        "contract_version": "1",
        **changes,
    }
