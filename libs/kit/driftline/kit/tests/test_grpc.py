"""The default deadline the kit's gRPC server gives unary calls whose client set none, the
server reflection standard clients (grpcurl) rely on, and the watch on a TLS certificate's end.

The whole server is exercised against real clients in tests/integration/inference.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from driftline.kit.grpc import _DefaultDeadline
from driftline.kit.settings import GrpcServerSettings


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    """The two things the wrapper asks of grpc.aio's ServicerContext."""

    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class _Servicer:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished = False
        self.cancelled = False

    async def Predict(self, request: str, context: _Context) -> str:  # noqa: N802
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True
        return request.upper()

    async def Fails(self, request: str, context: _Context) -> str:  # noqa: N802
        raise TimeoutError("the online store did not answer")

    def Stream(self, request: str, context: _Context) -> str:  # noqa: N802
        return "not a coroutine"


async def test_a_call_without_a_client_deadline_ends_at_the_default_and_its_work_stops():
    servicer = _Servicer(seconds=5.0)
    bounded = _DefaultDeadline(servicer, 0.05).Predict
    with pytest.raises(_Aborted) as aborted:
        await bounded("x", _Context(remaining=None))
    assert aborted.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.05s" in str(aborted.value)
    assert servicer.cancelled
    assert not servicer.finished


async def test_a_call_within_the_default_returns_its_result():
    assert await _DefaultDeadline(_Servicer(seconds=0.0), 5.0).Predict("x", _Context(remaining=None)) == "X"


async def test_a_long_client_deadline_still_gets_the_default():
    with pytest.raises(_Aborted) as aborted:
        await _DefaultDeadline(_Servicer(seconds=5.0), 0.05).Predict("x", _Context(remaining=3600.0))
    assert aborted.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_client_deadline_below_ten_defaults_is_left_to_grpc():
    # 0.2 s < 10 times 0.05 s: the wrapper adds nothing, so the 0.1 s call outlives the 0.05 s default.
    assert await _DefaultDeadline(_Servicer(seconds=0.1), 0.05).Predict("x", _Context(remaining=0.2)) == "X"


async def test_a_timeout_the_method_raises_itself_is_not_the_deadline():
    with pytest.raises(TimeoutError, match="online store"):
        await _DefaultDeadline(_Servicer(seconds=0.0), 5.0).Fails("x", _Context(remaining=None))


async def test_a_cancelled_call_is_cancelled_not_timed_out():
    servicer = _Servicer(seconds=5.0)
    call = asyncio.ensure_future(_DefaultDeadline(servicer, 5.0).Predict("x", _Context(remaining=None)))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert servicer.cancelled


def test_methods_that_are_not_coroutines_pass_through_unwrapped():
    servicer = _Servicer(seconds=0.0)
    assert _DefaultDeadline(servicer, 1.0).Stream == servicer.Stream


async def test_the_server_lists_its_services_health_and_reflection_to_reflection_clients():
    # What grpcurl and Postman do first: list the services, then describe one.
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from driftline.inference.v1 import inference_pb2
    from driftline.kit.grpc import GrpcServer

    name = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
    server = GrpcServer(GrpcServerSettings(port=0), service_names=[name])
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            asks = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=name),
            ]
            listed, described = [reply async for reply in stub.ServerReflectionInfo(iter(asks), timeout=10)]
        services = {s.name for s in listed.list_services_response.service}
        assert services == {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        assert described.file_descriptor_response.file_descriptor_proto  # the .proto, for grpcurl describe
    finally:
        await server.stop()
