"""Ground truth as the feedback topic carries it."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from driftline.feedback.v1 import feedback_pb2
from driftline.simulator.generator import SimEvent


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def feedback_label(event: SimEvent) -> feedback_pb2.FeedbackLabel:
    """The ``FeedbackLabel`` for a simulated event: keyed by entity (card) and event id.

    ``feedback_id`` is derived from the event id, so a replayed label is recognisably the same.
    """
    return feedback_pb2.FeedbackLabel(
        feedback_id=f"fb-{event.event_id}",
        entity_id=event.card_id,
        event_id=event.event_id,
        label=event.label,
        label_time=_timestamp(event.label_time),
        event_time=_timestamp(event.event_time),
    )
