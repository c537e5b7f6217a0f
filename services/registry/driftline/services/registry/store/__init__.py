"""Metadata storage through SQLAlchemy 2: the tables, the engine set-up, and the queries."""

from driftline.services.registry.store.database import GENESIS_HASH, Database

__all__ = ["GENESIS_HASH", "Database"]
