"""structlog configuration: one call at start-up, JSON in deployments, console locally.

structlog's own loggers print through its processor chain; records of libraries that log through
the standard library (faust, mode, aiokafka, grpc) reach the root logger's one handler, whose
``structlog.stdlib.ProcessorFormatter`` renders them with the same renderer, so every line of a
service is one JSON object (or one console line) whichever API wrote it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from driftline.kit.settings import LogSettings

# The name of the root handler ``configure_logging`` installs: a second call replaces it.
_HANDLER_NAME = "driftline.kit.logging"


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted (like logging's last resort), so
    a handler installed under a test's captured stderr does not keep writing to a closed stream."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)
        self.set_name(_HANDLER_NAME)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


class _ServiceName:
    """Adds ``service`` to an event that has none (a processor)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._service:
            event.setdefault("service", self._service)
        return event


def configure_logging(settings: LogSettings | None = None, *, service: str = "") -> None:
    """Route structlog and the standard library's logging through one JSON/console renderer."""
    settings = settings or LogSettings()
    level = logging.getLevelName(settings.level)  # a known name: LogSettings checks it
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
        structlog.processors.StackInfoRenderer(),
    ]
    # Standard-library records carry their own stack text; they get the logger's name instead.
    # Those of other threads (librdkafka's, served on a client's poll thread) do not see this
    # thread's context variables: the service's name is added to them as a constant.
    foreign: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _ServiceName(service),
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: structlog.types.Processor
    exc_info: list[structlog.types.Processor] = []
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        exc_info = [structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, *exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exc_info, renderer],
        )
    )
    root = logging.getLogger()
    # Handlers others installed (pytest's capture) stay; only ours is replaced, never doubled.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
