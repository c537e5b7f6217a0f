"""gRPC server bootstrap: grpc.aio, health, reflection, limits, default deadlines, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from driftline.kit.settings import GrpcServerSettings

log = structlog.get_logger(__name__)

OVERALL = ""  # the health service's name for the server as a whole


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options shared by servers and clients so both agree on the size limit."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


class _DefaultDeadline(grpc.aio.ServerInterceptor):
    """Give unary calls without a client deadline the server's default one.

    The wrapped handler of each method is built once and cached: this runs on every call.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._bound(handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _bound(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        seconds = self._seconds

        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            if remaining is not None and remaining < seconds * 10:
                return await inner(request, context)
            try:
                return await asyncio.wait_for(inner(request, context), timeout=seconds)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no result within {seconds}s")

        return grpc.unary_unary_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcServer:
    """A grpc.aio server whose health says SERVING only when its owner says it is ready."""

    def __init__(
        self,
        settings: GrpcServerSettings,
        *,
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.settings = settings
        self.server = grpc.aio.server(
            interceptors=[_DefaultDeadline(settings.default_deadline_s), *interceptors],
            options=channel_options(settings.max_message_bytes),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    async def start(self) -> int:
        """Bind and start; every service reports NOT_SERVING until ``set_serving(True)``."""
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address}")
        await self.set_serving(False)
        await self.server.start()
        log.info("grpc_started", address=f"{self.settings.host}:{self.port}", services=self._service_names)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [OVERALL, *self._service_names]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        """Report NOT_SERVING, refuse new calls and let in-flight ones finish within drain_s."""
        await self.set_serving(False)
        await self.server.stop(self.settings.drain_s)
        log.info("grpc_stopped")


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    log.info("shutdown_requested")


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None
