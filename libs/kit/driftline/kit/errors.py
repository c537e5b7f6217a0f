"""One error root. Each subclass carries its gRPC status; adapters turn them into aborts."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

log = structlog.get_logger(__name__)


class DriftlineError(Exception):
    """Root of every error Driftline raises on purpose."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: Short machine-readable code, e.g. for dead-letter headers and metrics labels.
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(DriftlineError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    code = "invalid_argument"


class NotFound(DriftlineError):
    status = grpc.StatusCode.NOT_FOUND
    code = "not_found"


class AlreadyExists(DriftlineError):
    status = grpc.StatusCode.ALREADY_EXISTS
    code = "already_exists"


class FailedPrecondition(DriftlineError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "failed_precondition"


class Aborted(DriftlineError):
    """A compare-and-swap lost its race; the caller may re-read and retry."""

    status = grpc.StatusCode.ABORTED
    code = "aborted"


class Unauthenticated(DriftlineError):
    status = grpc.StatusCode.UNAUTHENTICATED
    code = "unauthenticated"


class PermissionDenied(DriftlineError):
    status = grpc.StatusCode.PERMISSION_DENIED
    code = "permission_denied"


class ResourceExhausted(DriftlineError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "resource_exhausted"


class Unavailable(DriftlineError):
    status = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"


class DeadlineExceeded(DriftlineError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED
    code = "deadline_exceeded"


class DataLoss(DriftlineError):
    """Stored bytes no longer match their digest."""

    status = grpc.StatusCode.DATA_LOSS
    code = "data_loss"


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Turn a ``DriftlineError`` raised by a grpc.aio servicer method into ``context.abort``.

    Unexpected exceptions are logged with their traceback and reported as INTERNAL without
    leaking details to the client.
    """

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except DriftlineError as err:
                await context.abort(err.status, str(err))

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except DriftlineError as err:
            await context.abort(err.status, str(err))
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception:
            log.exception("rpc_failed", method=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper  # type: ignore[return-value]


async def call(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Await ``fn`` and re-raise gRPC client errors as Driftline errors with the same status."""
    try:
        return await fn(*args, **kwargs)
    except grpc.aio.AioRpcError as err:
        raise error_for_status(err.code(), err.details() or "") from err


_BY_STATUS: dict[grpc.StatusCode, type[DriftlineError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        DataLoss,
    )
}


def error_for_status(status: grpc.StatusCode, message: str) -> DriftlineError:
    """The Driftline error that stands for a gRPC status (INTERNAL for unknown ones)."""
    return _BY_STATUS.get(status, DriftlineError)(message)
