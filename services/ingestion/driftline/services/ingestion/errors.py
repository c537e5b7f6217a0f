"""Errors of the ingestion service (subclasses of the Driftline error root)."""

from __future__ import annotations

from driftline.kit.errors import FailedPrecondition


class ContractError(FailedPrecondition):
    """A contract file is unreadable or breaks the contract language's own rules."""
