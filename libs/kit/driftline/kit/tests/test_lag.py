"""The lag reporter's thread: a broker that does not answer skips rounds, and stop ends it."""

from __future__ import annotations

import contextlib
import threading

from confluent_kafka import KafkaError, KafkaException

from driftline.kit.lag import LagReporter


class _Lag:
    group = "g"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.reports = 0
        self.closed = False
        self.done = threading.Event()

    def close(self) -> None:
        self.closed = True

    def report(self) -> dict[tuple[str, int], int]:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
        self.reports += 1
        if self.reports == 2:
            self.done.set()
        return {("t", 0): 1}


def test_rounds_the_broker_does_not_answer_are_skipped_and_reporting_goes_on_until_stop():
    lag = _Lag(failures=3)
    reporter = LagReporter(lag, interval_s=0.01)  # type: ignore[arg-type]
    reporter.start()
    try:
        assert lag.done.wait(10), "the reporter stopped after the broker's failures"
    finally:
        reporter.stop()
    assert lag.failures == 0
    settled = lag.reports
    assert not reporter._thread.is_alive()
    assert lag.reports == settled  # nothing after stop
    assert lag.closed


def test_stop_before_start_closes_and_reports_nothing():
    lag = _Lag(failures=0)
    LagReporter(lag, interval_s=0.01).stop()  # type: ignore[arg-type]
    assert lag.reports == 0
    assert lag.closed


def test_a_round_in_flight_at_stop_keeps_its_client_open():
    class _Stuck(_Lag):
        def report(self):
            self.done.set()
            threading.Event().wait(5)  # a broker that does not answer
            return {}

    lag = _Stuck(failures=0)
    reporter = LagReporter(lag, interval_s=0.01)  # type: ignore[arg-type]
    reporter.start()
    assert lag.done.wait(5)
    reporter.stop()  # waits 1 s, then leaves the daemon thread to its round
    assert reporter._thread.is_alive()
    assert not lag.closed


def test_group_lag_hands_its_clients_log_lines_over_even_when_the_broker_does_not_answer(caplog):
    import logging

    from driftline.kit.lag import GroupLag
    from driftline.kit.settings import KafkaSettings

    lag = GroupLag(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", ["t"], timeout_s=1.0)
    try:
        with caplog.at_level(logging.DEBUG, logger="librdkafka"), contextlib.suppress(KafkaException):
            lag.read()
        # librdkafka's connection failures reach the standard library logger, not stderr, and
        # do not pile up in the client unread.
        assert any(r.name == "librdkafka" for r in caplog.records)
    finally:
        lag.close()
