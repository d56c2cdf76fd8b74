"""Background loops that outlive their bugs.

A daemon's background loops (the hub's ticker and sweeper, the Redis store's flusher and
auditor, ...) run for the life of the process. An unexpected exception in one pass must not
end the nursery that holds them, and with it the server: `run_forever` logs it with its
traceback, reports it, and starts the loop again after a pause that doubles while it keeps
failing (so a persistent bug costs little) and resets once the loop has run a while.
Cancellation (trio.Cancelled is a BaseException) passes through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

RESTART_DELAY_MIN_S = 0.1
RESTART_DELAY_MAX_S = 30.0


async def run_forever(name: str, loop: Callable[[], Awaitable[None]], *,
                      on_failure: Callable[[str], None], log: logging.Logger) -> None:
    """Run `loop` until it returns; after an exception, report it and run it again."""
    delay = RESTART_DELAY_MIN_S
    while True:
        started = trio.current_time()
        try:
            await loop()
        except Exception:
            on_failure(name)
            log.exception("background task %s failed; restarting it in %.1f s", name, delay)
        else:
            return
        if trio.current_time() - started > RESTART_DELAY_MAX_S:
            delay = RESTART_DELAY_MIN_S  # it had been running fine
        await trio.sleep(delay)
        delay = min(delay * 2, RESTART_DELAY_MAX_S)
