import grpc
import pytest

from driftline.kit import errors


class _Context:
    def __init__(self):
        self.aborted = None

    async def abort(self, status, details):
        self.aborted = (status, details)
        raise grpc.aio.AbortError()


class _Servicer:
    @errors.grpc_errors
    async def fails(self, request, context):
        raise errors.Aborted("alias moved")

    @errors.grpc_errors
    async def crashes(self, request, context):
        raise KeyError("secret internals")

    @errors.grpc_errors
    async def works(self, request, context):
        return request * 2


async def test_driftline_error_aborts_with_its_status():
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await _Servicer().fails(1, context)
    assert context.aborted == (grpc.StatusCode.ABORTED, "alias moved")


async def test_unexpected_error_is_internal_without_details():
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await _Servicer().crashes(1, context)
    assert context.aborted[0] == grpc.StatusCode.INTERNAL
    assert "secret" not in context.aborted[1]


async def test_successful_call_passes_through():
    assert await _Servicer().works(21, _Context()) == 42


def test_error_for_status_round_trips_every_subclass():
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.Aborted,
        errors.DataLoss,
        errors.Unauthenticated,
    ):
        assert type(errors.error_for_status(cls.status, "x")) is cls
    assert type(errors.error_for_status(grpc.StatusCode.UNKNOWN, "x")) is errors.DriftlineError
