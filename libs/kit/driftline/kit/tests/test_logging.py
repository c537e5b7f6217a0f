import json

import structlog

from driftline.kit.logging import configure_logging
from driftline.kit.settings import LogSettings


def test_json_logging_writes_event_and_context_as_json(capsys):
    structlog.reset_defaults()
    configure_logging(LogSettings(format="json", level="INFO"), service="unit")
    structlog.get_logger("t").info("model_loaded", version=3)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "model_loaded"
    assert record["version"] == 3
    assert record["service"] == "unit"
    assert record["level"] == "info"
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def test_debug_is_filtered_at_info_level(capsys):
    structlog.reset_defaults()
    configure_logging(LogSettings(format="json", level="INFO"))
    structlog.get_logger("t").debug("noise")
    assert "noise" not in capsys.readouterr().err
    structlog.reset_defaults()
