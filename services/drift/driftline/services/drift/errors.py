"""Errors of the drift service, under the kit's error root."""

from __future__ import annotations

from driftline.kit.errors import FailedPrecondition, InvalidArgument, Unavailable


class ReferenceUnavailable(Unavailable):
    """The registry could not be asked for the watched model's reference sample."""

    code = "reference_unavailable"


class InvalidReference(FailedPrecondition):
    """A model version's reference sample cannot be used (shape mismatch, no rows)."""

    code = "invalid_reference"


class InvalidFeedback(InvalidArgument):
    """A feedback label that can never be joined (no key, label not 0/1)."""

    code = "invalid_feedback"
