"""Errors the trainer raises on purpose; each carries the reason code a run records."""

from __future__ import annotations

from driftline.kit.errors import DataLoss, FailedPrecondition, InvalidArgument


class InsufficientData(FailedPrecondition):
    """The training set is too small, or a split lacks one of the classes."""

    code = "insufficient_data"


class RefusedForNow(InsufficientData):
    """The gate refused the challenger of a change that may need more labels to be learnt."""

    code = "refused_for_now"


class ParityError(FailedPrecondition):
    """The ONNX model's scores differ from the native model's by more than the tolerance."""

    code = "onnx_parity"


class ReproductionMismatch(DataLoss):
    """A rebuilt training set or retrained model differs from the registered one."""

    code = "reproduction_mismatch"


class BadTrigger(InvalidArgument):
    """A trigger message that can never start a retrain (wrong type, undecodable)."""

    code = "bad_trigger"
