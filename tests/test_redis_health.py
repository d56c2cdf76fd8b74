"""The Redis store's health machine, and its judgement of Redis persistence (pure)."""

from __future__ import annotations

import logging

import pytest

from presenced.store.base import StoreStats
from presenced.store.redis_health import Health, HealthMachine, persistence_problem


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock, caplog: pytest.LogCaptureFixture) -> HealthMachine:
    caplog.set_level(logging.DEBUG, logger="presenced.store.redis")
    return HealthMachine("redis://x:1/0", StoreStats(shared=True), backoff_min_s=0.05,
                         backoff_max_s=0.2, clock=clock)


def running(health: HealthMachine) -> HealthMachine:
    health.feed_subscribed()
    health.resynced(clean=True)
    health.started()
    assert health.state is Health.HEALTHY and health.healthy
    return health


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def test_starting_until_the_first_load(health: HealthMachine, caplog):
    assert health.state is Health.STARTING and not health.healthy
    health.call_failed("resync: ConnectionError: refused")
    health.call_failed("resync: ConnectionError: refused")
    # Not an outage yet, one warning however many failures.
    assert health.state is Health.STARTING
    assert warnings(caplog) == [
        "cannot reach Redis at redis://x:1/0 (resync: ConnectionError: refused); retrying"]
    # Calls back before the start: nothing to resynchronise on top of the load.
    assert health.call_succeeded() is False
    running(health)
    assert health.stats.outages == 0
    assert infos(caplog) == []


def test_an_outage_is_logged_when_it_starts_and_when_it_ends(health, clock, caplog):
    running(health)
    health.call_failed("flush: ConnectionError: reset")
    assert health.state is Health.UNAVAILABLE and not health.calls_ok
    health.feed_lost("listener: ConnectionError: reset")
    health.call_failed("claim: ConnectionError: refused")
    assert health.stats.outages == 1
    assert warnings(caplog) == [
        "Redis unavailable (flush: ConnectionError: reset): serving from memory, retrying"]
    clock.now += 4.3
    assert health.call_succeeded() is True  # the store must resync
    assert health.state is Health.UNAVAILABLE  # the feed is still down
    health.feed_subscribed()
    assert health.state is Health.RECOVERING
    health.resynced(clean=True)
    assert health.state is Health.HEALTHY
    assert infos(caplog) == ["Redis available again after 4.3 s; resynchronised"]
    assert health.stats.outages == 1


def test_failing_again_while_recovering_is_the_same_outage(health, caplog):
    running(health)
    health.feed_lost("listener: reset")
    health.feed_subscribed()
    assert health.state is Health.RECOVERING
    health.feed_lost("listener: reset")
    health.feed_subscribed()
    health.resynced(clean=True)
    assert health.healthy and health.stats.outages == 1
    assert len(warnings(caplog)) == 1


def test_recovering_until_a_clean_resync(health: HealthMachine):
    running(health)
    health.feed_lost("listener: reset")
    health.feed_subscribed()
    # Something asked for another resync meanwhile: not there yet.
    health.resynced(clean=False)
    assert health.state is Health.RECOVERING
    health.resynced(clean=True)
    assert health.healthy


def test_a_resync_while_calls_fail_does_not_end_the_outage(health: HealthMachine):
    running(health)
    health.call_failed("flush: timeout")
    health.resynced(clean=True)
    assert health.state is Health.UNAVAILABLE
    assert health.call_succeeded()
    assert health.state is Health.RECOVERING


def test_retry_delay_doubles_up_to_the_maximum_and_resets(health: HealthMachine):
    running(health)
    delays = []
    for _ in range(5):
        health.call_failed("flush: timeout")
        delays.append(health.retry_delay)
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
    health.call_succeeded()
    assert health.retry_delay == 0.0 and health.calls_ok


def test_the_feed_dropping_leaves_calls_alone(health: HealthMachine):
    running(health)
    health.feed_lost("listener: reset")
    assert health.calls_ok and health.retry_delay == 0.0
    assert health.call_succeeded() is False


def test_closed_is_not_an_outage(health: HealthMachine, caplog):
    running(health)
    health.closed()
    assert health.state is Health.CLOSED and not health.healthy
    health.call_failed("flush: closed")
    assert health.state is Health.CLOSED
    assert health.stats.outages == 0 and warnings(caplog) == []


@pytest.mark.parametrize("save, appendonly, source, problem", [
    ("3600 1 300 100", "no", None, None),
    ("", "yes", None, None),
    (None, "no", None, None),  # CONFIG refused: nothing to say
    ("", "no", None, "every friendship that no instance has in memory is lost"),
    ("", "no", "friends file /f.csv", "rebuilt from the friends file /f.csv"),
])
def test_persistence_problem(save, appendonly, source, problem):
    found = persistence_problem(save, appendonly, source)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert found.startswith("Redis keeps nothing on disk")
