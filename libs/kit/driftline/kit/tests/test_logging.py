import contextlib
import json
import logging

import pytest
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


@pytest.fixture
def reset_logging():
    structlog.reset_defaults()
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == "driftline.kit.logging"]:
        root.removeHandler(handler)
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def test_standard_library_records_are_rendered_as_json_like_structlog_ones(capsys, reset_logging):
    configure_logging(LogSettings(format="json", level="INFO"), service="unit")
    logging.getLogger("aiokafka").warning("x %s", 1)
    structlog.get_logger("t").info("model_loaded", version=3)
    foreign, own = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-2:])
    assert foreign["event"] == "x 1"
    assert foreign["level"] == "warning"
    assert foreign["logger"] == "aiokafka"
    assert foreign["service"] == "unit"
    assert "timestamp" in foreign
    assert own["event"] == "model_loaded"
    assert own["level"] == "info"


def test_standard_library_exceptions_are_rendered_into_the_json_line(capsys, reset_logging):
    configure_logging(LogSettings(format="json", level="INFO"))
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("grpc").exception("call failed")
    (line,) = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "call failed"
    assert record["level"] == "error"
    assert "ValueError: boom" in record["exception"]


def test_standard_library_records_below_the_level_are_dropped(capsys, reset_logging):
    configure_logging(LogSettings(format="json", level="WARNING"))
    logging.getLogger("aiokafka").info("noise")
    assert "noise" not in capsys.readouterr().err


def test_console_format_renders_standard_library_records_with_the_console_renderer(capsys, reset_logging):
    configure_logging(LogSettings(format="console", level="INFO"))
    logging.getLogger("aiokafka").warning("x %s", 1)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert not line.startswith("{")
    assert "x 1" in line
    assert "aiokafka" in line


def test_configuring_twice_writes_each_standard_library_record_once(capsys, reset_logging):
    configure_logging(LogSettings(format="json", level="INFO"))
    configure_logging(LogSettings(format="json", level="INFO"))
    logging.getLogger("aiokafka").warning("once")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert [h.get_name() for h in logging.getLogger().handlers].count("driftline.kit.logging") == 1


def test_librdkafka_lines_come_out_as_json_too(capfd, reset_logging):
    # librdkafka writes its own `%3|...|FAIL|` lines to stderr unless a client has a `logger`:
    # the kit's clients all have one. A broker that refuses connections makes it log at once.
    import time

    from driftline.kit.kafka import DeliveryError, KafkaProducer
    from driftline.kit.settings import KafkaSettings

    configure_logging(LogSettings(format="json", level="INFO"), service="unit")
    producer = KafkaProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1", delivery_timeout_ms=1000))
    try:
        producer.send("nowhere", b"x")
        deadline = time.monotonic() + 10
        lines: list[str] = []
        while time.monotonic() < deadline and not any("librdkafka" in line for line in lines):
            time.sleep(0.2)
            lines += capfd.readouterr().err.splitlines()
    finally:
        with contextlib.suppress(DeliveryError):  # nothing could be delivered, as intended
            producer.close(0.1)
    lines += capfd.readouterr().err.splitlines()
    ours = [json.loads(line) for line in lines if line.startswith("{") and '"librdkafka"' in line]
    assert ours, lines[-5:]
    assert all(record["logger"] == "librdkafka" for record in ours)
    assert all(record["service"] == "unit" for record in ours)  # logged on librdkafka's thread
    assert not [line for line in lines if line.startswith("%")], "librdkafka printed lines of its own"
