#!/usr/bin/env python3
"""Container health check of a Driftline service, run by docker-compose.yml.

    driftline-healthcheck grpc HOST:PORT [--ca FILE [--cert FILE --key FILE]]
                                             gRPC health service reports SERVING ("" service);
                                             over TLS with --ca (the CA the server's certificate
                                             chains to), mutual TLS with --cert and --key too
    driftline-healthcheck http URL           the URL answers 2xx (a /metrics endpoint)

Exits 0 when healthy, 1 otherwise. A gRPC service says SERVING only once its dependencies are
reachable and its model is loaded, so this is readiness, not mere liveness.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_S = 3.0


def _channel(address: str, tls: dict[str, str]) -> Any:
    import grpc

    if not tls:
        return grpc.insecure_channel(address)
    files = {name: Path(path).read_bytes() for name, path in tls.items()}
    credentials = grpc.ssl_channel_credentials(files.get("--ca"), files.get("--key"), files.get("--cert"))
    return grpc.secure_channel(address, credentials)


def check_grpc(address: str, tls: dict[str, str] | None = None) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(address, tls or {}) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError as err:
            sys.stderr.write(f"{address}: {err.code().name}\n")
            return False
    serving: bool = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        sys.stderr.write(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}\n")
    return serving


def check_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError) as err:
        sys.stderr.write(f"{url}: {err}\n")
        return False


def main(argv: list[str]) -> int:
    options = argv[3:]
    tls = dict(zip(options[::2], options[1::2], strict=False))
    if (
        len(argv) < 3
        or argv[1] not in ("grpc", "http")
        or len(options) % 2
        or (tls and argv[1] != "grpc")
        or not set(tls) <= {"--ca", "--cert", "--key"}
        or (tls and "--ca" not in tls)
        or (("--cert" in tls) != ("--key" in tls))
    ):
        sys.stderr.write(__doc__ or "")
        return 2
    healthy = check_grpc(argv[2], tls) if argv[1] == "grpc" else check_http(argv[2])
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
