"""Deterministic synthetic card transactions with ground truth, covariate drift and concept drift.

Used by ``driftline produce``, the trainer's bootstrap, the drift tests and the demo::

    sim = TransactionSimulator(SimulatorConfig(seed=7, concept_drift_at=50_000))
    for ev in sim.events(100_000):
        publish(ev.event)           # the raw JSON transaction, per the data contract
        later(ev.label_time, feedback_label(ev))
"""

from driftline.simulator.feedback import feedback_label
from driftline.simulator.generator import (
    CONTRACT_VERSION,
    SimEvent,
    SimulatorConfig,
    TransactionSimulator,
    rfc3339,
)
from driftline.simulator.world import CHANNELS, MERCHANT_CATEGORIES, RISKY_CATEGORIES

__all__ = [
    "CHANNELS",
    "CONTRACT_VERSION",
    "MERCHANT_CATEGORIES",
    "RISKY_CATEGORIES",
    "SimEvent",
    "SimulatorConfig",
    "TransactionSimulator",
    "feedback_label",
    "rfc3339",
]
