"""The Prometheus /metrics endpoint and a few metric helpers every service uses."""

from __future__ import annotations

import structlog
from prometheus_client import Info, start_http_server

from driftline.kit.settings import MetricsSettings

log = structlog.get_logger(__name__)

BUILD = Info("driftline_build", "Service name and version of this process.")


def serve_metrics(port: int, settings: MetricsSettings | None = None, *, service: str = "") -> int:
    """Serve /metrics on host:port in a daemon thread; port 0 picks a free one. Returns the port."""
    settings = settings or MetricsSettings()
    BUILD.info({"service": service, "version": "0.1.0"})
    if not settings.enabled:
        return 0
    server, _thread = start_http_server(port, addr=settings.host)
    bound = int(server.server_address[1])
    log.info("metrics_started", address=f"{settings.host}:{bound}")
    return bound
