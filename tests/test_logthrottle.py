"""Logging that cannot flood (issue 12): a client refused 300 times is a line and a count, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from bridge.logthrottle import Throttle, ThrottledLog, ThrottleFilter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def messages(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_300_refusals_are_one_line_then_one_count(caplog, clock):
    refusals = ThrottledLog(logging.getLogger("test.throttle.a"), interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle.a"):
        for _ in range(300):
            clock.now += 0.1
            refusals.warning(("refused", "10.0.0.7"), "refusing client %s: wrong token", "10.0.0.7")
        assert messages(caplog, "test.throttle.a") == ["refusing client 10.0.0.7: wrong token"]
        clock.now += 31.0  # 60 s after the first
        assert refusals.tick() == 1
    lines = messages(caplog, "test.throttle.a")
    assert lines == ["refusing client 10.0.0.7: wrong token",
                     "refusing client 10.0.0.7: wrong token (repeated 299 times in the last 61 s)"]


def test_keys_are_throttled_apart_and_a_quiet_key_logs_again(caplog, clock):
    refusals = ThrottledLog(logging.getLogger("test.throttle.b"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.throttle.b"):
        assert refusals.info("a", "from a")
        assert refusals.info("b", "from b")
        assert not refusals.info("a", "from a")
        clock.now += 10.0
        assert refusals.info("b", "from b again")  # b held nothing back: its line just goes out
        assert refusals.info("a", "from a again")
    assert messages(caplog, "test.throttle.b") == [
        "from a", "from b", "from a (repeated 1 times in the last 10 s)", "from b again", "from a again"]


def test_flush_writes_what_is_held_at_shutdown(caplog, clock):
    refusals = ThrottledLog(logging.getLogger("test.throttle.c"), interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle.c"):
        for _ in range(5):
            refusals.warning("k", "disk full")
        assert refusals.tick() == 0  # the interval is not over
        clock.now += 2.0
        assert refusals.flush() == 1
        assert refusals.flush() == 0
    assert messages(caplog, "test.throttle.c") == ["disk full", "disk full (repeated 4 times in the last 2 s)"]


def test_a_flood_of_distinct_keys_keeps_memory_bounded_and_loses_no_count(caplog, clock):
    throttle = Throttle(interval=60.0, clock=clock, max_keys=4)
    summaries = []
    for i in range(100):
        for _ in range(3):
            _, due = throttle.hit(("client", i), logging.WARNING, "client %d", (i,))
            summaries += due
    summaries += throttle.drain()
    assert len(throttle._windows) == 0
    assert sorted(s.count for s in summaries) == [2] * 100  # every key's 2 held-back lines are counted


def test_the_filter_throttles_an_existing_loggers_lines_by_template(caplog, clock):
    logger = logging.getLogger("test.throttle.filter")
    throttle = ThrottleFilter(interval=60.0, clock=clock)
    logger.addFilter(throttle)
    try:
        with caplog.at_level(logging.WARNING, logger="test.throttle.filter"):
            for port in range(300):
                logger.warning("refusing TCP client %s: already %d connections", ("127.0.0.1", port), 64)
            logger.error("something else")
            clock.now += 61.0
            logger.warning("refusing TCP client %s: already %d connections", ("127.0.0.1", 9), 64)
            for _ in range(3):
                logger.warning("refusing TCP client %s: already %d connections", ("127.0.0.1", 10), 64)
            assert throttle.flush(logger) == 1
    finally:
        logger.removeFilter(throttle)
    assert messages(caplog, "test.throttle.filter") == [
        "refusing TCP client ('127.0.0.1', 0): already 64 connections",
        "something else",
        "refusing TCP client ('127.0.0.1', 9): already 64 connections (and 299 more like it in the last 61 s)",
        "refusing TCP client ('127.0.0.1', 9): already 64 connections (repeated 3 times in the last 0 s)",
    ]


def test_a_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        Throttle(interval=0)
