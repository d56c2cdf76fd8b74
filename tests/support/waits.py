"""Clocks and waits the tests share.

Prefer events (`trio.Event`, `trio.testing.Sequencer`, `wait_all_tasks_blocked`) wherever a test
arranges a race. The polling waits below are for conditions only another process or the kernel
can make true (a daemon answering, a socket closing), always with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds, as the server's clock reads it."""
    return int(time.time() * 1000)


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll `predicate` from a trio task until it is true; TooSlowError after `timeout`."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll `predicate` from plain code until it is true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
