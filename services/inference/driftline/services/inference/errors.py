"""The inference service's own errors, each with its gRPC status (through driftline.kit.errors)."""

from __future__ import annotations

from driftline.kit.errors import (
    DataLoss,
    DeadlineExceeded,
    DriftlineError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


class ModelLoadError(FailedPrecondition):
    """A model artifact that cannot be loaded or warmed; the previous model keeps serving."""

    code = "model_load_failed"


class DigestMismatch(DataLoss):
    """Artifact bytes whose sha256 differs from the registry's record."""

    code = "digest_mismatch"


class InvalidInput(InvalidArgument):
    """A tensor of the wrong shape or dtype, or holding NaN or Inf."""


class UnknownModel(NotFound):
    code = "unknown_model"


class UnknownEntity(NotFound):
    code = "unknown_entity"


class StaleFeatures(FailedPrecondition):
    """The staleness policy is "fail" and a feature is stale or missing."""

    code = "stale_features"


class QueueFull(ResourceExhausted):
    code = "queue_full"


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class Expired(DeadlineExceeded):
    code = "deadline_exceeded"


class ModelFailed(DriftlineError):
    """ONNX Runtime raised while running a batch (INTERNAL)."""

    code = "model_failed"
