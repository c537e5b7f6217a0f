"""The lag reporter's thread: a broker that does not answer skips rounds, and stop ends it."""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException

from driftline.kit.lag import LagReporter


class _Lag:
    group = "g"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.reports = 0
        self.done = threading.Event()

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


def test_stop_before_start_does_nothing():
    LagReporter(_Lag(failures=0), interval_s=0.01).stop()  # type: ignore[arg-type]
