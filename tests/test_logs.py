"""presenced/logs.py: formats, worker tags, the per-cause rate limit, URLs without secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest

from presenced.logs import RateLimit, redact_url, setup_logging


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_rate_limit_lets_one_line_per_cause_per_interval_and_counts_the_rest():
    clock = FakeClock()
    limit = RateLimit(60, clock=clock)
    assert limit.allow("redis-lost") == ""
    assert limit.allow("login-refused") == ""  # another cause: its own window
    for _ in range(41):
        assert limit.allow("redis-lost") is None
    assert limit.suppressed("redis-lost") == 41
    clock.now += 59.9
    assert limit.allow("redis-lost") is None
    clock.now += 0.2
    assert limit.allow("redis-lost") == " (42 more like this in the last 60 s)"
    clock.now += 61
    assert limit.allow("redis-lost") == ""


def test_rate_limit_remembers_a_bounded_number_of_causes():
    clock = FakeClock()
    limit = RateLimit(60, max_causes=3, clock=clock)
    for peer in range(10):
        assert limit.allow(("login-refused", peer)) == ""
    assert len(limit._windows) == 3


def test_json_lines_carry_worker_and_fields(restore_logging):
    out = io.StringIO()
    setup_logging("info", "json", worker="worker 1", stream=out)
    logging.getLogger("presenced.test").info("hello %s", "there",
                                             extra={"fields": {"event": "x", "n": 3}})
    logging.getLogger("presenced.test").debug("not shown")
    (line,) = out.getvalue().splitlines()
    body = json.loads(line)
    assert body["msg"] == "hello there" and body["level"] == "info"
    assert body["logger"] == "presenced.test" and body["worker"] == "worker 1"
    assert body["event"] == "x" and body["n"] == 3 and body["ts"].endswith("Z")


def test_text_lines_say_which_worker(restore_logging):
    out = io.StringIO()
    setup_logging("debug", "text", worker="worker 0", stream=out)
    logging.getLogger("presenced.test").warning("careful")
    assert " WARNING presenced.test [worker 0]: careful" in out.getvalue()
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    logging.getLogger("presenced.test").info("alone")
    assert " INFO presenced.test: alone" in out.getvalue()


def test_setup_refuses_unknown_levels_and_formats(restore_logging):
    with pytest.raises(ValueError):
        setup_logging("verbose")
    with pytest.raises(ValueError):
        setup_logging("info", "xml")


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:hunter2@db.internal:6380/1", "redis://…@db.internal:6380/1"),
    ("rediss://user:hunter2@db/0", "rediss://…@db/0"),
    ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
])
def test_urls_are_logged_without_passwords(url, shown):
    assert redact_url(url) == shown
